"""What to train on next: curricula, difficulty filters, length budgets, data sources.

Pure logic: this package sees numbers and rows, never models, Ray only in the
scheduler actor wrapper.
"""
