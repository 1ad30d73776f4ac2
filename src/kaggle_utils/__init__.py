"""Offline diabetic-retinopathy grading toolkit (APTOS 2019 recipes).

Grades: 0 No DR, 1 Mild, 2 Moderate, 3 Severe, 4 Proliferative; scored by quadratic weighted kappa.
"""

import os

# albumentations checks PyPI for a newer version on import; kernels and CI have no network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

GRADES = (0, 1, 2, 3, 4)
GRADE_NAMES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative")
