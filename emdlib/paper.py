"""The paper's published numbers (Mazaheri & Roy-Chowdhury, WACV 2022), and nothing else.

These constants appear only in columns labelled as the paper's; every number of ours comes from a run record.
Keys: method (Table row) → {(manipulation, quality): accuracy %}; quality "HQ" = FF++ c23, "LQ" = c40.
"""

from __future__ import annotations

QUALITY = {"c23": "HQ", "c40": "LQ"}
SHORT = {"Deepfakes": "DF", "Face2Face": "F2F", "NeuralTextures": "NT"}

#: Table II — classification accuracy (%) on DF/F2F/NT at HQ (c23) and LQ (c40).
TABLE_II: dict[str, dict[tuple[str, str], float]] = {
    row: dict(zip([(m, q) for q in ("c23", "c40") for m in ("Deepfakes", "Face2Face", "NeuralTextures")], vals))
    for row, vals in {
        "Steg.Features+SVM": (77.12, 74.68, 76.94, 65.58, 60.58, 60.69),
        "Cozzolino et al.": (81.78, 85.32, 80.60, 68.26, 62.08, 62.42),
        "Bayar and Stamm": (90.18, 94.93, 86.04, 80.95, 76.83, 72.38),
        "Rahmouni et al.": (82.16, 93.48, 75.18, 73.25, 67.08, 62.59),
        "MesoNet": (95.26, 95.84, 85.95, 89.52, 83.56, 75.74),
        "MultiTask": (93.92, 92.77, 88.05, 85.77, 82.31, 80.67),
        "XceptionNet": (98.85, 98.23, 94.50, 94.28, 91.56, 82.11),
        "MultiTask+EnsFER": (94.10, 95.22, 89.15, 86.31, 85.89, 81.46),
        "EMD": (99.13, 99.03, 96.31, 95.88, 94.45, 83.67),
    }.items()
}

#: Table III — Face2Face classification accuracy (%), HQ and LQ; None where the paper prints "-".
TABLE_III: dict[str, dict[str, float | None]] = {
    "LAE": {"c23": 90.93, "c40": None},
    "DCNN": {"c23": 93.50, "c40": 82.13},
    "FT-res": {"c23": 94.47, "c40": None},
    "Two-stream": {"c23": 96.00, "c40": 86.83},
    "Capsule-Forensics": {"c23": 97.13, "c40": 81.20},
    "Face X-ray": {"c23": 97.73, "c40": None},
    "MultiTask+EnsFER": {"c23": 95.22, "c40": 85.89},
    "EMD": {"c23": 99.03, "c40": 94.45},
}

#: Table IV — segmentation pixel accuracy (%) on F2F/NT at HQ and LQ.
TABLE_IV: dict[str, dict[tuple[str, str], float]] = {
    row: dict(zip([(m, q) for q in ("c23", "c40") for m in ("Face2Face", "NeuralTextures")], vals))
    for row, vals in {
        "MultiTask": (90.27, 88.67, 87.76, 84.55),
        "XceptionNet": (96.13, 91.34, 92.45, 89.39),
        "MultiTask+EnsFER": (93.22, 90.56, 89.31, 86.56),
        "EMD": (98.43, 93.78, 95.22, 91.54),
    }.items()
}

#: Table V — ablation on HQ (c23): classification / segmentation accuracy (%) on F2F and NT.
TABLE_V: dict[str, dict[tuple[str, str], float]] = {
    "MultiTask+SimFER": {("Face2Face", "cls"): 94.93, ("Face2Face", "seg"): 91.84,
                         ("NeuralTextures", "cls"): 88.62, ("NeuralTextures", "seg"): 89.21},
    "XceptionNet+SimFER": {("Face2Face", "cls"): 98.63, ("Face2Face", "seg"): 96.89,
                           ("NeuralTextures", "cls"): 95.83, ("NeuralTextures", "seg"): 92.44},
    "MultiTask+EnsFER": {("Face2Face", "cls"): 95.22, ("Face2Face", "seg"): 93.22,
                         ("NeuralTextures", "cls"): 89.15, ("NeuralTextures", "seg"): 90.56},
    "EMD": {("Face2Face", "cls"): 99.03, ("Face2Face", "seg"): 98.43,
            ("NeuralTextures", "cls"): 96.31, ("NeuralTextures", "seg"): 93.78},
}

#: §IV-E text around Figs. 4–5: EMD's AUC on F2F (detection ~99%, segmentation ~97%).
FIG4_EMD_AUC = {"detection": 0.99, "segmentation": 0.97}
