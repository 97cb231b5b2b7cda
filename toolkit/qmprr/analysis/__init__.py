"""Reading recordings for people: show (with filters and follow), stats, an HTML
timeline report and a Chrome trace export; ``commands`` wires them into ``qmprr``.

Everything streams: :mod:`~qmprr.analysis.source` decodes records as dicts,
:mod:`~qmprr.analysis.context` follows commands and transactions, the rest
consume that in flat memory. See docs/analysis.md.
"""
