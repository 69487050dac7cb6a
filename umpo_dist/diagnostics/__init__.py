"""Does the model know what it doesn't know? Diagnostics computed at every evaluation.

- `calibration.py`: one-step predicted variance against the squared error actually made,
  on fresh transitions (the evaluation episodes', which no model has trained on).
- `imagination.py`: the return the model imagines for the policy against the return the
  real environment gave over the same steps, from states along the evaluation episodes.
- `foresight.py`: the probability of termination the model gives where the real
  episodes terminated, against elsewhere: does it see a fall coming?
- `watch.py`: the warning a user notices when imagination keeps beating reality.
- `plots.py`: the per-run PNG (calibration curve, gap by env step).
"""
