"""Reads, one module per entity, scoped to what the user may see (ARCHITECTURE.md, Conventions 1).

Who sees what is `federation.access`'s rule; these modules only load and shape the rows. Every
function takes keyword arguments only (`round_for(user=..., pk=...)`), and every `*_for(user=...)`
either returns what the user may see or raises NotFound, so no view, web or API, builds a
queryset of its own. Budget figures come from the accounting app's selectors (the ledger is the
one source of truth for spent epsilon); nothing here recomputes them. A refusal's message that
the web UI shows is marked `gettext_noop`: `federation.web.base.web_view` translates it.
"""
