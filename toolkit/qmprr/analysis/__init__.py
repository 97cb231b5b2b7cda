"""Reading recordings for people: show (and, later, stats, diff, reports)."""
