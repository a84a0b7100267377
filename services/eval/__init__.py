"""``selfagent eval``: a built-in desktop task suite with checkers, run against a stack.

``suite`` (the tasks, standard library only, so that registering the command
needs no extra), ``desktop`` (readings through the exec endpoint), ``runner``
(a session per run), ``report`` (table, JSON, HTML), ``cli``. Running needs
the ``actuator`` extra's httpx, which ``local`` and ``dev`` include.
"""
