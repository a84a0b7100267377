# Fixtures every test folder can use (nats_server, desktop).
pytest_plugins = ("tests.harness.fixtures",)
