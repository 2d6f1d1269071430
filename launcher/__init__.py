"""The edge stack without Docker: the services compose runs, started as local processes.

`services` declares them once, `local` maps them onto one machine, `gateway` renders and runs the nginx
gateway, `processes` starts and stops children (also used by tests), `run` is `python -m launcher run`.
"""
