"""Model-signal bindings (owner: on-commit helper; placeholder until written)."""


def connect_all() -> None:
    pass
