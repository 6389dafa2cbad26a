"""The results store: one SQLite file per study directory.

A run is keyed by the identity hash of everything that determines it. A finished run (its metrics,
group metrics, epoch history and predictions) is written in one transaction, so a study killed at
any point holds each run either complete or not at all, and re-running it skips finished runs.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from .atomic import EnvironmentFault

SCHEMA_VERSION = 3
_METRICS_TABLE = """CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(run_id), metric TEXT NOT NULL, attribute TEXT NOT NULL DEFAULT '',
    grp TEXT NOT NULL DEFAULT '', value REAL, PRIMARY KEY (run_id, metric, attribute, grp))"""
# Layer-wise sensitivity scans (`faircompress sensitivity`): added tables only (CREATE IF NOT EXISTS on
# every open), so stores of schema 3 gain them without a migration and older versions still read the
# rest. One scan per baseline and split; a row per layer (position: its place in the model), technique
# ('prune' at a sparsity, 'int8' at level 8), level and attribute ('': overall accuracy; an attribute:
# its gap), the compressed copy's value, the unmodified baseline's on the same split, their difference,
# the layer's share of zeros in the copy and its size.
_SENSITIVITY_TABLES = """
CREATE TABLE IF NOT EXISTS sensitivity_scans (
    baseline_id TEXT NOT NULL REFERENCES runs(run_id), split TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL,
    dataset_key TEXT, images INTEGER NOT NULL, levels_json TEXT NOT NULL, device TEXT, seconds REAL, created_at REAL NOT NULL,
    PRIMARY KEY (baseline_id, split));
CREATE TABLE IF NOT EXISTS sensitivity (
    baseline_id TEXT NOT NULL, split TEXT NOT NULL, layer TEXT NOT NULL, position INTEGER NOT NULL,
    technique TEXT NOT NULL CHECK (technique IN ('prune', 'int8')), level REAL NOT NULL, attribute TEXT NOT NULL DEFAULT '',
    value REAL NOT NULL, reference REAL NOT NULL, delta REAL NOT NULL, sparsity REAL NOT NULL, elements INTEGER NOT NULL,
    PRIMARY KEY (baseline_id, split, layer, technique, level, attribute),
    FOREIGN KEY (baseline_id, split) REFERENCES sensitivity_scans(baseline_id, split)) WITHOUT ROWID;
"""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    study TEXT NOT NULL,
    kind TEXT NOT NULL,
    label TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config_json TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at REAL, finished_at REAL,
    timings_json TEXT, device TEXT, precision TEXT, selection TEXT,
    versions_json TEXT, git_commit TEXT, artefact TEXT, error TEXT,
    recipe_json TEXT, repeat INTEGER, baseline_id TEXT, details_json TEXT,
    variant TEXT, recipe_key TEXT, technique TEXT, level REAL, is_reference INTEGER NOT NULL DEFAULT 0,
    dataset_key TEXT, artefact_sha256 TEXT
);
""" + _METRICS_TABLE + """;
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(run_id), epoch INTEGER NOT NULL, train_loss REAL, train_acc REAL,
    sel_loss REAL, sel_acc REAL, lr REAL, seconds REAL, train_seconds REAL, PRIMARY KEY (run_id, epoch));
CREATE TABLE IF NOT EXISTS predictions (
    run_id TEXT NOT NULL REFERENCES runs(run_id), sample INTEGER NOT NULL, y_true INTEGER NOT NULL,
    y_pred INTEGER NOT NULL, PRIMARY KEY (run_id, sample)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples (
    dataset_key TEXT NOT NULL, sample INTEGER NOT NULL, subject TEXT, label INTEGER,
    attributes_json TEXT, PRIMARY KEY (dataset_key, sample)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS datasets (
    dataset_key TEXT PRIMARY KEY, name TEXT, class_names_json TEXT, attribute_groups_json TEXT);
CREATE TABLE IF NOT EXISTS dataset_files (path TEXT PRIMARY KEY, sha256 TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS split_counts (
    dataset_key TEXT NOT NULL, split TEXT NOT NULL, label INTEGER NOT NULL, attributes_json TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (dataset_key, split, label, attributes_json)) WITHOUT ROWID;
""" + _SENSITIVITY_TABLES
_CHILD_TABLES = ("metrics", "epochs", "predictions")
IDENTITY_COLUMNS = ("kind", "label", "seed", "recipe_json", "repeat", "baseline_id", "variant", "recipe_key", "technique", "level",
                    "is_reference")


class StoreError(Exception):
    """The results store cannot be opened or used; the message says why and where."""


class StoreWriteError(StoreError, EnvironmentFault):
    """The machine refused the store a write (full disk, read-only or unwritable folder); the file itself is fine."""


_WRITE_FAULTS = {"disk is full": "disk full", "disk I/O error": "I/O error", "unable to open": "cannot open the file",
                 "readonly": "read-only"}  # sqlite's messages for SQLITE_FULL, SQLITE_IOERR, SQLITE_CANTOPEN, SQLITE_READONLY


def _write_fault(path: Path, e: sqlite3.Error) -> StoreWriteError | None:
    cause = next((c for fragment, c in _WRITE_FAULTS.items() if fragment in str(e)), None)
    return StoreWriteError(f"{path}: cannot write the results store ({cause})") if cause else None


@dataclass
class RunResult:
    """Everything a finished run writes, in one transaction."""

    metrics: pd.DataFrame         # long format: metric, attribute, group, value (see evaluate/metrics.py)
    epochs: list[dict[str, float]]
    sample_ids: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    timings: dict[str, float]
    device: str = ""
    precision: str = ""
    selection: str = ""
    artefact: str = ""
    artefact_sha256: str = ""     # of the artefact file as stored, for `verify` and rebuilds
    details: dict[str, Any] = field(default_factory=dict)  # e.g. per-kernel distinct values and sparsity

    def scalar(self, metric: str) -> float:
        """A scalar metric's value (nan when absent)."""
        m = self.metrics
        row = m[(m.metric == metric) & (m.attribute == "") & (m.group == "")]
        return float(row.value.iloc[0]) if len(row) else float("nan")


class ResultStore:
    FILENAME = "results.sqlite"

    def __init__(self, study_dir: str | Path) -> None:
        self.path = Path(study_dir) / self.FILENAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            if self.conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            self.conn.executescript(_SCHEMA)  # idempotent: every statement is IF NOT EXISTS
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            found = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        except sqlite3.DatabaseError as e:
            fault = _write_fault(self.path, e)  # the machine refused a write: the file itself may be fine
            raise fault or StoreError(f"{self.path}: not a usable results store ({e}); move it aside to start afresh") from None
        except OSError as e:
            raise StoreWriteError(f"{self.path.parent}: cannot write the study directory ({e.strerror or e})") from None
        if found == "1":
            self._migrate_from_v1()
            found = "2"
        if found == "2":
            self._migrate_from_v2()
        elif found != str(SCHEMA_VERSION):
            self.conn.close()
            raise StoreError(f"{self.path}: written with store schema {found}, this version reads {SCHEMA_VERSION}")

    def _migrate_from_v1(self) -> None:
        """Schema 1 -> 2, in one transaction: typed identity columns from each run's recipe, and the
        three metric tables (scalars named 'gap:<attribute>', groups, classes) as one long table."""
        from .compress.recipes import parse_recipe

        with self.transaction() as c:
            if self._schema(c) != "1":  # another process migrated it while this one waited for the lock
                return
            for col, kind in [("variant", "TEXT"), ("recipe_key", "TEXT"), ("technique", "TEXT"), ("level", "REAL"),
                              ("is_reference", "INTEGER NOT NULL DEFAULT 0")]:
                c.execute(f"ALTER TABLE runs ADD COLUMN {col} {kind}")
            for run_id, recipe_json in c.execute("SELECT run_id, recipe_json FROM runs WHERE kind='variant'").fetchall():
                r = parse_recipe(json.loads(recipe_json or "[]"))
                c.execute("UPDATE runs SET variant=?, recipe_key=?, technique=?, level=?, is_reference=? WHERE run_id=?",
                          (r.label, r.key(), r.technique, r.level, int(r.is_reference), run_id))
            c.execute("ALTER TABLE metrics RENAME TO metrics_v1")
            c.execute(_METRICS_TABLE)
            c.execute("""INSERT INTO metrics SELECT run_id,
                           CASE WHEN instr(name, ':') > 0 THEN substr(name, 1, instr(name, ':') - 1) ELSE name END,
                           CASE WHEN instr(name, ':') > 0 THEN substr(name, instr(name, ':') + 1) ELSE '' END, '', value
                         FROM metrics_v1""")
            for metric in ("accuracy", "count"):
                c.execute(f"INSERT INTO metrics SELECT run_id, '{metric}', attribute, grp, {metric} FROM group_metrics")
            c.execute("INSERT INTO metrics SELECT run_id, 'accuracy', 'class', class, recall FROM class_metrics")
            c.execute("INSERT INTO metrics SELECT run_id, 'count', 'class', class, count FROM class_metrics")
            for table in ("metrics_v1", "group_metrics", "class_metrics"):
                c.execute(f"DROP TABLE {table}")
            c.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
            if c.execute("SELECT 1 FROM runs LIMIT 1").fetchone():
                c.execute("INSERT OR REPLACE INTO meta VALUES ('protocol', '1')")  # every schema 1 store was protocol 1

    @staticmethod
    def _schema(c: sqlite3.Connection) -> str:
        return c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]

    def _migrate_from_v2(self) -> None:
        """Schema 2 -> 3: each run records the dataset it was scored on and its artefact's SHA-256.
        A store that holds one dataset gives it to every run; with several, which run saw which is
        unknown, and the report says so instead of guessing."""
        with self.transaction() as c:
            if self._schema(c) != "2":  # another process migrated it while this one waited for the lock
                return
            c.execute("ALTER TABLE runs ADD COLUMN dataset_key TEXT")
            c.execute("ALTER TABLE runs ADD COLUMN artefact_sha256 TEXT")
            keys = [k for (k,) in c.execute("SELECT dataset_key FROM datasets")]
            if len(keys) == 1:
                c.execute("UPDATE runs SET dataset_key=?", (keys[0],))
            c.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))

    @classmethod
    def open_existing(cls, study_dir: str | Path) -> "ResultStore":
        path = Path(study_dir) / cls.FILENAME
        if not path.is_file():
            studies = sorted(d.name for d in Path(study_dir).glob("*") if (d / cls.FILENAME).is_file())
            grid = (f"; it holds a models grid (grid.yaml): each model's study is a folder of it ({', '.join(studies)}), "
                    "and compare.html puts them side by side") if (Path(study_dir) / "grid.yaml").is_file() and studies else ""
            raise StoreError(f"{study_dir}: no results store here (expected {path}){grid}")
        return cls(study_dir)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All or nothing; a write the machine refuses (e.g. a full disk) is rolled back and raised as `StoreWriteError`."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:  # sqlite may have rolled back already
                    self.conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as e:
            fault = _write_fault(self.path, e)
            if fault is None:
                raise
            raise fault from e

    # --- runs ------------------------------------------------------------
    def status(self, run_id: str) -> str | None:
        row = self.conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row[0] if row else None

    def start_run(self, run_id: str, *, study: str, identity: dict[str, Any], config: dict[str, Any], versions: dict[str, str],
                  git_commit: str, dataset_key: str | None = None) -> None:
        """Mark a run as running (a retry of an unfinished or failed run clears its partial rows).
        ``identity``: the planned run's typed columns (`IDENTITY_COLUMNS`; kind, label and seed required)."""
        cols = [c for c in IDENTITY_COLUMNS if c in identity]
        values = [json.dumps(v) if c == "recipe_json" and v is not None else v for c, v in ((c, identity[c]) for c in cols)]
        with self.transaction() as c:
            for table in _CHILD_TABLES:
                c.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            c.execute(
                f"""INSERT INTO runs (run_id, study, config_json, status, attempts, started_at, versions_json, git_commit, dataset_key,
                       {", ".join(cols)})
                   VALUES (?, ?, ?, 'running', 1, ?, ?, ?, ?{", ?" * len(cols)})
                   ON CONFLICT(run_id) DO UPDATE SET status='running', attempts=attempts+1, started_at=excluded.started_at,
                       config_json=excluded.config_json, versions_json=excluded.versions_json, dataset_key=excluded.dataset_key,
                       git_commit=excluded.git_commit, error=NULL, finished_at=NULL, artefact_sha256=NULL""",
                (run_id, study, json.dumps(config, sort_keys=True), time.time(), json.dumps(versions), git_commit, dataset_key,
                 *values),
            )

    def finish_run(self, run_id: str, r: RunResult) -> None:
        m = r.metrics
        with self.transaction() as c:
            c.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)",
                          zip([run_id] * len(m), m["metric"], m["attribute"], m["group"], m["value"].astype(float)))
            c.executemany("INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          [(run_id, e["epoch"], e["train_loss"], e["train_acc"], e["sel_loss"], e["sel_acc"], e["lr"], e["seconds"],
                            e["train_seconds"]) for e in r.epochs])
            c.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?)",
                          zip([run_id] * len(r.sample_ids), r.sample_ids.tolist(), r.y_true.tolist(), r.y_pred.tolist()))
            c.execute(
                """UPDATE runs SET status='finished', finished_at=?, timings_json=?, device=?, precision=?, selection=?,
                   artefact=?, artefact_sha256=?, details_json=?, error=NULL WHERE run_id=?""",
                (time.time(), json.dumps(r.timings), r.device, r.precision, r.selection, r.artefact, r.artefact_sha256 or None,
                 json.dumps(r.details), run_id),
            )

    def fail_run(self, run_id: str, error: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET status='failed', finished_at=?, error=? WHERE run_id=?", (time.time(), error, run_id))

    # --- the protocol the runs were made under ----------------------------------
    def protocol(self) -> int | None:
        """The protocol version of the study's runs (None before the first run)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key='protocol'").fetchone()
        return int(row[0]) if row else None

    def set_protocol(self, version: int) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES ('protocol', ?)", (str(version),))

    # --- what the study is bound to: one dataset, one plan (see binding.py) ---
    def binding(self) -> tuple[dict[str, Any], dict[str, str]] | None:
        """The recorded binding and the dataset files' hashes it was made with; None before the first run."""
        row = self.conn.execute("SELECT value FROM meta WHERE key='binding'").fetchone()
        if row is None:
            return None
        return json.loads(row[0]), dict(self.conn.execute("SELECT path, sha256 FROM dataset_files").fetchall())

    def bind(self, binding: dict[str, Any], files: dict[str, str]) -> None:
        with self.transaction() as c:
            self._write_binding(c, binding, files)

    @staticmethod
    def _write_binding(c: sqlite3.Connection, binding: dict[str, Any], files: dict[str, str]) -> None:
        c.execute("INSERT OR REPLACE INTO meta VALUES ('binding', ?)", (json.dumps(binding, sort_keys=True),))
        c.execute("DELETE FROM dataset_files")
        c.executemany("INSERT INTO dataset_files VALUES (?, ?)", sorted(files.items()))

    # --- datasets (so analysis needs no reload of the images) -------------
    def record_samples(self, dataset_key: str, name: str, class_names: list[str], attribute_groups: dict[str, list[str]],
                       rows: list[tuple], split_counts: list[tuple] = ()) -> None:
        """A dataset's test samples, once: ``rows`` of (sample, subject, label, attributes_json); and in
        the same transaction the other splits' image counts, ``split_counts`` of (split, label,
        attributes_json, n), once (a study recorded before they were kept gets them on its next run)."""
        has_samples = self.conn.execute("SELECT 1 FROM datasets WHERE dataset_key=?", (dataset_key,)).fetchone() is not None
        if has_samples and (not split_counts or self.has_split_counts(dataset_key)):
            return
        with self.transaction() as c:
            if not has_samples:
                c.executemany("INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?, ?)", [(dataset_key, *r) for r in rows])
                c.execute("INSERT INTO datasets VALUES (?, ?, ?, ?)",
                          (dataset_key, name, json.dumps(class_names), json.dumps(attribute_groups)))
            if not self.has_split_counts(dataset_key):
                c.executemany("INSERT INTO split_counts VALUES (?, ?, ?, ?, ?)", [(dataset_key, *r) for r in split_counts])

    def has_split_counts(self, dataset_key: str) -> bool:
        return self.conn.execute("SELECT 1 FROM split_counts WHERE dataset_key=? LIMIT 1", (dataset_key,)).fetchone() is not None

    def split_counts(self, dataset_key: str) -> pd.DataFrame:
        """The recorded image counts of the splits other than test: split, label, attributes_json, n
        (empty for a study recorded before they were kept)."""
        return pd.read_sql_query("SELECT split, label, attributes_json, n FROM split_counts WHERE dataset_key=? "
                                 "ORDER BY split, label, attributes_json", self.conn, params=(dataset_key,))

    def sample_rows(self, dataset_key: str) -> list[tuple]:
        """The recorded test samples of one dataset: (sample, subject, label, attributes_json), in order."""
        return self.conn.execute("SELECT sample, subject, label, attributes_json FROM samples WHERE dataset_key=? ORDER BY sample",
                                 (dataset_key,)).fetchall()

    def adopt(self, old_keys: list[str], new: str, binding: dict[str, Any], files: dict[str, str]) -> None:
        """In one transaction: move the runs and samples of ``old_keys`` (the same test set under
        older keys) to ``new``, give it to runs that recorded none, and bind the study."""
        with self.transaction() as c:
            for old in old_keys:
                c.execute("UPDATE runs SET dataset_key=? WHERE dataset_key=?", (new, old))
                if c.execute("SELECT 1 FROM datasets WHERE dataset_key=?", (new,)).fetchone():
                    c.execute("DELETE FROM samples WHERE dataset_key=?", (old,))
                    c.execute("DELETE FROM datasets WHERE dataset_key=?", (old,))
                else:
                    c.execute("UPDATE samples SET dataset_key=? WHERE dataset_key=?", (new, old))
                    c.execute("UPDATE datasets SET dataset_key=? WHERE dataset_key=?", (new, old))
                if self.has_split_counts(new):
                    c.execute("DELETE FROM split_counts WHERE dataset_key=?", (old,))
                else:
                    c.execute("UPDATE split_counts SET dataset_key=? WHERE dataset_key=?", (new, old))
            c.execute("UPDATE runs SET dataset_key=? WHERE dataset_key IS NULL", (new,))
            self._write_binding(c, binding, files)

    # --- layer-wise sensitivity scans ------------------------------------------
    SENSITIVITY_COLUMNS = ("layer", "position", "technique", "level", "attribute", "value", "reference", "delta", "sparsity", "elements")

    def record_sensitivity(self, baseline_id: str, split: str, scan: dict[str, Any], rows: pd.DataFrame) -> None:
        """One scan of a baseline on a split, in one transaction, replacing an earlier scan of the same
        baseline and split. ``scan``: checkpoint_sha256, dataset_key, images, levels, device, seconds;
        ``rows``: `SENSITIVITY_COLUMNS`."""
        with self.transaction() as c:
            c.execute("DELETE FROM sensitivity WHERE baseline_id=? AND split=?", (baseline_id, split))
            c.execute("DELETE FROM sensitivity_scans WHERE baseline_id=? AND split=?", (baseline_id, split))
            c.execute("INSERT INTO sensitivity_scans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (baseline_id, split, scan["checkpoint_sha256"], scan.get("dataset_key"), int(scan["images"]),
                       json.dumps([float(x) for x in scan["levels"]]), scan.get("device"), scan.get("seconds"), time.time()))
            c.executemany(f"INSERT INTO sensitivity VALUES (?, ?{', ?' * len(self.SENSITIVITY_COLUMNS)})",
                          [(baseline_id, split, r.layer, int(r.position), r.technique, float(r.level), r.attribute, float(r.value),
                            float(r.reference), float(r.delta), float(r.sparsity), int(r.elements)) for r in rows.itertuples()])

    def sensitivity_scans(self) -> pd.DataFrame:
        """Every stored scan: baseline_id, split, checkpoint_sha256, dataset_key, images, levels_json, device, seconds, created_at."""
        return pd.read_sql_query("SELECT * FROM sensitivity_scans ORDER BY created_at", self.conn)

    def sensitivity(self, baseline_id: str | None = None, split: str | None = None) -> pd.DataFrame:
        """Stored scan rows (all, or one baseline's and/or split's): baseline_id, split, then `SENSITIVITY_COLUMNS`."""
        where = [(c, v) for c, v in (("baseline_id", baseline_id), ("split", split)) if v is not None]
        sql = "SELECT * FROM sensitivity" + (" WHERE " + " AND ".join(f"{c}=?" for c, _ in where) if where else "")
        return pd.read_sql_query(sql + " ORDER BY baseline_id, split, technique DESC, position, level, attribute", self.conn,
                                 params=[v for _, v in where])

    # --- reading ------------------------------------------------------------
    def runs(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM runs ORDER BY started_at", self.conn)

    def metrics(self) -> pd.DataFrame:
        """Every stored metric in long format: run_id, metric, attribute, group, value."""
        return pd.read_sql_query("SELECT run_id, metric, attribute, grp AS \"group\", value FROM metrics", self.conn)

    def epochs(self) -> pd.DataFrame:
        """Every run's per-epoch history (a baseline's training, a variant's fine-tuning): run_id, epoch,
        train_loss, train_acc, sel_loss, sel_acc, lr, seconds, train_seconds."""
        return pd.read_sql_query("SELECT * FROM epochs ORDER BY run_id, epoch", self.conn)

    def all_predictions(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT run_id, sample, y_pred FROM predictions", self.conn)

    def predictions(self, run_id: str) -> pd.DataFrame:
        return pd.read_sql_query("SELECT sample, y_true, y_pred FROM predictions WHERE run_id=? ORDER BY sample", self.conn, params=(run_id,))
