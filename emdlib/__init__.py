"""emdlib: an open reproduction of EMD (Mazaheri & Roy-Chowdhury, WACV 2022).

"Detection and Localization of Facial Expression Manipulations": a facial-expression-recognition ensemble (ESR)
feeds its selected feature map into an Xception/DeepLabv3+ network that classifies a face as manipulated and
segments where. See the numbered notebooks for the paper's tables and figures.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
