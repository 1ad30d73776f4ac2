"""Names of the files in a predictions folder: ``predict`` writes them; ``ensemble``, ``shift`` and the chain
read them. A module of its own so the readers need not import ``predict`` (and torch) for four names."""

PRED_FILE = "test_preds.csv"  # per run: id, pred, pred_fold<k>, status, reason, flag
VIEWS_FILE = "test_views.csv"  # per run: id, pred_fold<k>_view<v>: every fold x TTA view, unaveraged
FAILED_FILE = "failed_images.csv"  # id, reason: unreadable test images (they get the fallback grade)
FLAGGED_FILE = "flagged_images.csv"  # id, reason: graded but tiny, nearly black or with no retina found
