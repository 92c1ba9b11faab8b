"""Schema versions, one rule for both backends: a store is brought up to the code's version step by step, each step
one transaction, and a store newer than the code (or older than its migrations reach) is refused."""


class SchemaMismatch(RuntimeError):
    """The database's schema is one this server cannot use or bring up to date."""


def steps_to(found, current, migrations, where):
    """The versions to apply, in order, to bring a store at ``found`` to ``current``; raise ``SchemaMismatch`` if
    ``found`` is newer than the code or some step is missing."""
    steps = list(range(found + 1, current + 1))
    if found > current or not all(step in migrations for step in steps):
        raise SchemaMismatch(
            f"{where}: database schema version {found}, this server needs {current}: "
            "use a server of the database's version, or a new database"
        )
    return steps
