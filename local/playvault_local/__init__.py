"""Development-only: the local runner that runs PlayVault on embedded emulators (never deployed).

Everything it creates it reads from template.yaml: tables, queues, keys, parameters and functions.
"""
