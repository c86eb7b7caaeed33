"""Task registry (owner: core helper; placeholder until written)."""


def autodiscover() -> None:
    pass
