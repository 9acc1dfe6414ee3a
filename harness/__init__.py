"""The harness: fedgov run whole on one machine, for development, demos, tests and benchmarks.

`localstack` starts the real processes (Redis, gunicorn, Celery workers, partner agents) on
loopback; `simulation` sets a federation up through the services and reads its progress back;
`demo` makes the demo data. None of it is part of the coordinator or of a partner install:
no module of the apps imports it but the management commands that run it (`simulate`,
`seed_demo`, `demo_agents`); the tests and benchmarks do.
"""
