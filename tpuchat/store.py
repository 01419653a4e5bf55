"""Conversations on disk: one SQLite file (stdlib sqlite3, WAL) in the user data dir.

The chat UI saves the user's message before the answer starts, creates the
answer's row as soon as generation starts (marked stopped, empty) and fills
it in as text arrives, so a stopped, failed or killed answer keeps what was
produced.  Each answer carries its stats (FTL, tokens/s, tokens, model).

Location: paths.db_path().  The schema is versioned (PRAGMA user_version,
see MIGRATIONS).
"""

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .paths import db_path
from .runtime.protocol import GenerationStats

# The schema's history: the database's PRAGMA user_version says how many of
# these it has had.  Append, never edit: an old file runs the ones it lacks.
# Each uses IF NOT EXISTS, so a file from before versions (user_version 0,
# with or without the attachments table) takes them all safely.
MIGRATIONS = (
    # 1: conversations and their messages, each answer with its stats
    """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL DEFAULT '',
    system TEXT,
    model TEXT,
    settings TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conv_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL DEFAULT '',
    stopped INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    model TEXT,
    ftl_s REAL,
    tokens_per_s REAL,
    new_tokens INTEGER,
    prompt_tokens INTEGER,
    stop_reason TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_conv ON messages(conv_id, id);
""",
    # 2: images attached to messages
    """
CREATE TABLE IF NOT EXISTS attachments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    kind TEXT NOT NULL DEFAULT 'image',
    path TEXT,
    digest TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS attachments_msg ON attachments(message_id);
""",
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection) -> int:
    """Bring an open database to SCHEMA_VERSION; returns the version it had."""
    from .errors import TpuchatError

    had = db.execute("PRAGMA user_version").fetchone()[0]
    if had > SCHEMA_VERSION:
        raise TpuchatError(f"the conversation database was written by a newer tpuchat (schema {had}, this one "
                           f"knows {SCHEMA_VERSION}); upgrade tpuchat or set TPUCHAT_DATA to another directory")
    for version in range(had + 1, SCHEMA_VERSION + 1):
        with db:  # each step and its version number commit together
            for stmt in MIGRATIONS[version - 1].split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute(f"PRAGMA user_version={version}")
    return had


@dataclass
class StoredConversation:
    id: int
    title: str
    system: Optional[str]
    model: Optional[str]
    settings: Dict[str, Any]
    created: float
    updated: float


@dataclass
class StoredAttachment:
    """An image attached to a message: the file it came from and its sha256 (the image itself is not
    copied into the database)."""

    path: Optional[str]
    digest: str
    name: str = ""
    kind: str = "image"

    @property
    def exists(self) -> bool:
        return bool(self.path) and Path(self.path).is_file()


@dataclass
class StoredMessage:
    id: int
    conv_id: int
    role: str
    content: str
    stopped: bool = False
    error: Optional[str] = None
    model: Optional[str] = None
    stats: GenerationStats = field(default_factory=GenerationStats.partial)  # only _STAT_COLS are known
    created: float = 0.0
    attachments: List[StoredAttachment] = field(default_factory=list)


_STAT_COLS = ("ftl_s", "tokens_per_s", "new_tokens", "prompt_tokens", "stop_reason")


def _known_stats(stats: Optional[GenerationStats]) -> Dict[str, Any]:
    """The stored columns' values that are known (not None)."""
    if stats is None:
        return {}
    return {k: getattr(stats, k) for k in _STAT_COLS if getattr(stats, k) is not None}


class Store:
    """Thread-safe (one connection, one lock): the UI thread and the generation
    thread both write."""

    def __init__(self, path: Union[str, Path, None] = None):
        self.path = Path(path) if path is not None else db_path()
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=10)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            if str(self.path) != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            migrate(self._db)
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args=()) -> sqlite3.Cursor:
        with self._lock:
            cur = self._db.execute(sql, args)
            self._db.commit()
            return cur

    def _query(self, sql: str, args=()) -> List[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- conversations -----------------------------------------------------
    @staticmethod
    def _conv(row) -> StoredConversation:
        try:
            settings = json.loads(row["settings"]) if row["settings"] else {}
        except ValueError:
            settings = {}
        return StoredConversation(row["id"], row["title"], row["system"], row["model"], settings,
                                  row["created"], row["updated"])

    def new_conversation(self, title: str = "", system: Optional[str] = None, model: Optional[str] = None,
                         settings: Optional[dict] = None) -> StoredConversation:
        now = time.time()
        cur = self._exec(
            "INSERT INTO conversations(title, system, model, settings, created, updated) VALUES (?,?,?,?,?,?)",
            (title, system, model, json.dumps(settings or {}), now, now),
        )
        return self.get_conversation(cur.lastrowid)

    def get_conversation(self, conv_id: int) -> Optional[StoredConversation]:
        rows = self._query("SELECT * FROM conversations WHERE id=?", (conv_id,))
        return self._conv(rows[0]) if rows else None

    def list_conversations(self, search: str = "", limit: int = 500) -> List[StoredConversation]:
        if search:
            like = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = self._query(
                "SELECT * FROM conversations WHERE title LIKE ? ESCAPE '\\' OR id IN "
                "(SELECT conv_id FROM messages WHERE content LIKE ? ESCAPE '\\') ORDER BY updated DESC, id DESC LIMIT ?",
                (like, like, limit),
            )
        else:
            rows = self._query("SELECT * FROM conversations ORDER BY updated DESC, id DESC LIMIT ?", (limit,))
        return [self._conv(r) for r in rows]

    def update_conversation(self, conv_id: int, **fields) -> None:
        allowed = {"title", "system", "model", "settings"}
        sets, args = [], []
        for k, v in fields.items():
            if k not in allowed:
                raise ValueError(f"unknown conversation field {k}")
            if k == "settings":
                v = json.dumps(v or {})
            sets.append(f"{k}=?")
            args.append(v)
        sets.append("updated=?")
        args.append(time.time())
        args.append(conv_id)
        self._exec(f"UPDATE conversations SET {', '.join(sets)} WHERE id=?", args)

    def rename(self, conv_id: int, title: str) -> None:
        self.update_conversation(conv_id, title=title)

    def delete_conversation(self, conv_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM messages WHERE conv_id=?", (conv_id,))
            self._db.execute("DELETE FROM conversations WHERE id=?", (conv_id,))
            self._db.commit()

    def clear_messages(self, conv_id: int) -> None:
        self._exec("DELETE FROM messages WHERE conv_id=?", (conv_id,))

    # -- messages ------------------------------------------------------------
    @staticmethod
    def _msg(row) -> StoredMessage:
        stats = GenerationStats.partial(**{k: row[k] for k in _STAT_COLS})
        return StoredMessage(row["id"], row["conv_id"], row["role"], row["content"], bool(row["stopped"]),
                             row["error"], row["model"], stats, row["created"])

    def add_message(self, conv_id: int, role: str, content: str, stopped: bool = False,
                    model: Optional[str] = None, stats: Optional[GenerationStats] = None,
                    error: Optional[str] = None) -> int:
        known = _known_stats(stats)
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO messages(conv_id, role, content, stopped, error, model, ftl_s, tokens_per_s, new_tokens,"
                " prompt_tokens, stop_reason, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (conv_id, role, content, int(stopped), error, model, *(known.get(k) for k in _STAT_COLS), now),
            )
            self._db.execute("UPDATE conversations SET updated=? WHERE id=?", (now, conv_id))
            self._db.commit()
            return cur.lastrowid

    def update_message(self, msg_id: int, content: Optional[str] = None, stopped: Optional[bool] = None,
                       stats: Optional[GenerationStats] = None, error: Optional[str] = None) -> None:
        sets, args = [], []
        if content is not None:
            sets.append("content=?")
            args.append(content)
        if stopped is not None:
            sets.append("stopped=?")
            args.append(int(stopped))
        if error is not None:
            sets.append("error=?")
            args.append(error)
        for k, v in _known_stats(stats).items():
            sets.append(f"{k}=?")
            args.append(v)
        if not sets:
            return
        args.append(msg_id)
        self._exec(f"UPDATE messages SET {', '.join(sets)} WHERE id=?", args)

    def delete_message(self, msg_id: int) -> None:
        self._exec("DELETE FROM messages WHERE id=?", (msg_id,))

    def messages(self, conv_id: int) -> List[StoredMessage]:
        out = [self._msg(r) for r in self._query("SELECT * FROM messages WHERE conv_id=? ORDER BY id", (conv_id,))]
        rows = self._query("SELECT a.* FROM attachments a JOIN messages m ON a.message_id = m.id "
                           "WHERE m.conv_id=? ORDER BY a.id", (conv_id,))
        by_msg: Dict[int, List[StoredAttachment]] = {}
        for r in rows:
            by_msg.setdefault(r["message_id"], []).append(StoredAttachment(r["path"], r["digest"], r["name"], r["kind"]))
        for m in out:
            m.attachments = by_msg.get(m.id, [])
        return out

    # -- attachments ---------------------------------------------------------
    def add_attachment(self, msg_id: int, path: Optional[str], digest: str, name: str = "", kind: str = "image") -> None:
        self._exec("INSERT INTO attachments(message_id, kind, path, digest, name) VALUES (?,?,?,?,?)",
                   (msg_id, kind, path, digest, name))

    def recent_prompts(self, limit: int = 200) -> List[str]:
        """The user's latest prompts over every conversation, oldest first."""
        rows = self._query("SELECT content FROM messages WHERE role='user' ORDER BY id DESC LIMIT ?", (limit,))
        return [r["content"] for r in reversed(rows)]

    # -- export ----------------------------------------------------------------
    def export_dict(self, conv_id: int) -> dict:
        conv = self.get_conversation(conv_id)
        if conv is None:
            raise KeyError(conv_id)
        return {
            "id": conv.id,
            "title": conv.title,
            "system": conv.system,
            "model": conv.model,
            "settings": conv.settings,
            "created": conv.created,
            "updated": conv.updated,
            "messages": [
                dict({"role": m.role, "content": m.content, "stopped": m.stopped, "error": m.error, "model": m.model,
                      "stats": _known_stats(m.stats), "created": m.created},
                     **({"attachments": [{"kind": a.kind, "path": a.path, "name": a.name, "sha256": a.digest}
                                         for a in m.attachments]} if m.attachments else {}))
                for m in self.messages(conv_id)
            ],
        }

    def export_json(self, conv_id: int) -> str:
        return json.dumps(self.export_dict(conv_id), indent=2, ensure_ascii=False)

    def export_markdown(self, conv_id: int) -> str:
        from .chat.statsline import format_stats

        d = self.export_dict(conv_id)
        out = [f"# {d['title'] or 'Conversation'}", ""]
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(d["created"]))
        out.append(f"*{when}" + (f" · model `{d['model']}`" if d["model"] else "") + "*")
        out.append("")
        if d["system"]:
            out += ["**System:** " + d["system"], ""]
        for m in d["messages"]:
            if m["role"] == "user":
                out += ["## You", ""]
                out += [f"*[image: {a['path'] or a['name']}]*" for a in m.get("attachments", [])]
                out += [m["content"], ""]
            else:
                out += ["## " + (m["model"] or "Assistant"), "", m["content"], ""]
                line = format_stats(m["stats"], "markdown", m["stopped"], m["error"])
                if line:
                    out += ["*" + line + "*", ""]
        return "\n".join(out).rstrip() + "\n"
