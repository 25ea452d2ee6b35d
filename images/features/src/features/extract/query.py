"""A query Param is the user's own SQL, pasted into ``SELECT ... FROM (<query>) AS src``: before anything runs
it must parse, with a real SQL parser (sqlglot) in the warehouse's dialect, as exactly one read-only query.

Refused, with one line naming the Param: stacked statements (``...; COMMIT; DELETE ...``), anything that is
not a query (DML, DDL, PRAGMA, SET, COPY, transaction control...), a data-modifying ``WITH``, ``SELECT ...
INTO``, locking clauses (``FOR UPDATE``), and the few functions that change the session or reach outside it.
This is the first guard; the second is the read-only session the extract reads in
(:class:`features.extract.warehouse.Warehouse`), the third the read-only role the README asks for.
"""

from __future__ import annotations

import logging

import sqlglot
from sqlglot import dialects as sqlglot_dialects
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from features.errors import ExtractError

# SQLAlchemy backend name -> sqlglot dialect, where they differ; other names are used as they are when
# sqlglot knows them, else the generic dialect parses.
DIALECTS = {"postgresql": "postgres", "mssql": "tsql", "mariadb": "mysql", "awsathena": "athena"}

# Nodes that make a statement something other than a read, wherever they appear in the tree
WRITES: tuple[type[exp.Expression], ...] = tuple(
    node
    for name in ("DML", "DDL", "Drop", "Alter", "TruncateTable", "Command", "Set", "Pragma", "Transaction",
                 "Commit", "Rollback", "Attach", "Detach", "Use", "Analyze", "Grant", "Revoke", "LoadData",
                 "Kill", "Cache", "Uncache", "Refresh", "Comment", "Execute", "Copy", "Into", "Lock")
    if (node := getattr(exp, name, None)) is not None
)
# Functions a read-only transaction does not stop: they change the session (set_config could lift its
# read-only default) or act outside it (dblink runs SQL on another connection).
SESSION_FUNCTIONS = {"set_config", "dblink", "dblink_exec", "dblink_send_query", "pg_terminate_backend",
                     "pg_cancel_backend", "pg_reload_conf", "lo_import", "lo_export", "load_extension"}


def dialect_of(backend: str) -> str | None:
    """The sqlglot dialect of a SQLAlchemy backend name (None: sqlglot's generic SQL)."""
    name = DIALECTS.get(backend, backend)
    # the names only: Dialect.classes would import every dialect module
    return name if name in sqlglot_dialects.DIALECT_MODULE_NAMES else None


def read_only_query(query: str, param: str, backend: str) -> str:
    """``query`` without trailing ``;``, after checking it is exactly one read-only query, else an
    ExtractError naming ``param`` (e.g. "the events query (Param events_query)") and what is wrong."""
    dialect = dialect_of(backend)
    refuse = f"{param} must be a single read-only query (one SELECT)"
    try:
        tokens = sqlglot.tokenize(query, dialect=dialect)
    except TokenError:
        raise ExtractError(f"{refuse}: it has an unterminated string, quoted name or comment") from None
    # trailing ';' are harmless; one anywhere else separates statements
    end = len(tokens)
    while end and tokens[end - 1].token_type == TokenType.SEMICOLON:
        end -= 1
    if not end:
        raise ExtractError(f"{refuse}: it is empty")
    if any(token.token_type == TokenType.SEMICOLON for token in tokens[:end]):
        raise ExtractError(f"{refuse}: it holds several statements separated by ';'")
    text = query[: tokens[end].start] if end < len(tokens) else query
    sqlglot_log = logging.getLogger("sqlglot")
    level = sqlglot_log.level
    sqlglot_log.setLevel(logging.ERROR)  # unsupported syntax is refused below, not warned about
    try:
        statements = [s for s in sqlglot.parse(text, dialect=dialect) if s is not None]
    except ParseError as error:
        where = error.errors[0] if error.errors else {}
        near = f" near {where['highlight']!r}" if where.get("highlight") else ""
        at = f" at line {where['line']}, column {where['col']}" if where.get("line") else ""
        raise ExtractError(
            f"{refuse}: it does not parse as {dialect or 'standard'} SQL ({where.get('description', error)}"
            f"{near}{at}); for SQL the parser cannot read, create a view and give it as the table"
        ) from None
    finally:
        sqlglot_log.setLevel(level)
    if len(statements) != 1:
        raise ExtractError(f"{refuse}: it holds {len(statements)} statements")
    statement = statements[0]
    if not isinstance(statement, exp.Query | exp.Values) or isinstance(statement, WRITES):
        raise ExtractError(f"{refuse}, not {describe(statement)}")
    for node in statement.walk():
        if isinstance(node, exp.Into):
            raise ExtractError(f"{refuse}: SELECT ... INTO creates a table")
        if isinstance(node, exp.Lock):
            clause = "FOR UPDATE" if node.args.get("update") else "FOR SHARE"
            raise ExtractError(f"{refuse}: its locking clause ({clause}) takes row locks")
        if isinstance(node, WRITES):
            raise ExtractError(f"{refuse}: it holds {describe(node)} inside")
        name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower() if isinstance(
            node, exp.Func) else ""
        if name in SESSION_FUNCTIONS:
            raise ExtractError(f"{refuse}: it calls {name}(), which acts outside a read-only query")
    return text.strip()


def describe(node: exp.Expression) -> str:
    """What kind of statement ``node`` is, in SQL words: "a DELETE statement", "an EXPLAIN statement"."""
    kind = str(node.this).upper() if isinstance(node, exp.Command) else node.key.upper()
    return f"{'an' if kind[:1] in 'AEIOU' else 'a'} {kind} statement"
