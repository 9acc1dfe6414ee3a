"""The web UI: server-rendered pages, one module per resource, calling the same services as
the API (ARCHITECTURE.md, Conventions 1).

Reads come from `federation.selectors`, writes go through `federation.services`, and who may
see or do what is `federation.access`'s rule (the services check it again). A view only
translates: `NotFound` becomes a 404 page, `PermissionDenied` a 403 page (`base.web_view`), and
any other refusal of a service lands on the form or in a message (`base.attempt`, the one
adapter). Every change is a POST; pages that only read render no change form at all.
"""
