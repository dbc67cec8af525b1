"""Data: the FF++ layout reader, the synth and forge generators, prepare (face cache) and the torch datasets."""
