"""The bad-input corpus: every kind of input people hand to ``emd detect``, ``emd prepare`` and the FF++ reader,
generated in the tests from tiny data, each asserting the message, the exit code, that the batch finishes and
that nothing is left half-written."""
