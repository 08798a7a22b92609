"""PostgreSQL only: gate changes are announced with NOTIFY on the ``sluice_gates`` channel.

Statement-level triggers (with transition tables) on ``reviews_gate``: an INSERT announces
``opened``; an UPDATE that changes a gate's status, claim or escalation announces ``decided`` /
``expired`` / ``canceled``, ``claimed`` / ``released`` or ``escalated``. NOTIFY is delivered
only when the transaction commits (and not at all when it rolls back), so a web page hears of a
change exactly when other connections can read it. Every code path that changes a gate (the
services, the expiry sweep's bulk UPDATE, the admin) is covered without calling anything.

A payload carries the gate's id, the kind of change, and what the web process needs to decide
who may hear of it (its group, its escalation group once escalated, its run's tenant); never
its content. A statement that changes more than 100 gates (the expiry sweep's batches) sends
one ``many`` notice instead, on which every page refreshes. ``reviews.push`` listens.

SQLite (the embedded default) has no NOTIFY: there, the pages poll (docs/reviews.md).
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

FUNCTION = r"""
CREATE OR REPLACE FUNCTION sluice_gate_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    r record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT count(*) INTO n FROM new_rows;
        IF n > 100 THEN
            PERFORM pg_notify('sluice_gates', '{"kind": "many"}');
            RETURN NULL;
        END IF;
        FOR r IN
            SELECT g.id, 'opened' AS kind, g."group",
                   CASE WHEN g.escalated_at IS NULL THEN '' ELSE g.escalate_to END AS esc,
                   run.tenant
            FROM new_rows g JOIN workflows_run run ON run.id = g.run_id
        LOOP
            PERFORM pg_notify('sluice_gates', json_build_object(
                'id', r.id, 'kind', r.kind, 'group', r."group", 'escalated_to', r.esc,
                'tenant', r.tenant)::text);
        END LOOP;
        RETURN NULL;
    END IF;
    SELECT count(*) INTO n
    FROM new_rows g JOIN old_rows o ON o.id = g.id
    WHERE o.status IS DISTINCT FROM g.status
       OR o.claimed_by_id IS DISTINCT FROM g.claimed_by_id
       OR o.escalated_at IS DISTINCT FROM g.escalated_at;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    IF n > 100 THEN
        PERFORM pg_notify('sluice_gates', '{"kind": "many"}');
        RETURN NULL;
    END IF;
    FOR r IN
        SELECT g.id,
               CASE
                   WHEN o.status IS DISTINCT FROM g.status THEN g.status::text
                   WHEN o.claimed_by_id IS DISTINCT FROM g.claimed_by_id THEN
                       CASE WHEN g.claimed_by_id IS NULL THEN 'released' ELSE 'claimed' END
                   ELSE 'escalated'
               END AS kind,
               g."group",
               CASE WHEN g.escalated_at IS NULL THEN '' ELSE g.escalate_to END AS esc,
               run.tenant
        FROM new_rows g
        JOIN old_rows o ON o.id = g.id
        JOIN workflows_run run ON run.id = g.run_id
        WHERE o.status IS DISTINCT FROM g.status
           OR o.claimed_by_id IS DISTINCT FROM g.claimed_by_id
           OR o.escalated_at IS DISTINCT FROM g.escalated_at
    LOOP
        PERFORM pg_notify('sluice_gates', json_build_object(
            'id', r.id, 'kind', r.kind, 'group', r."group", 'escalated_to', r.esc,
            'tenant', r.tenant)::text);
    END LOOP;
    RETURN NULL;
END
$$;
"""

TRIGGERS = """
CREATE TRIGGER reviews_gate_notify_insert AFTER INSERT ON reviews_gate
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sluice_gate_notify();
CREATE TRIGGER reviews_gate_notify_update AFTER UPDATE ON reviews_gate
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sluice_gate_notify();
"""

DROP = """
DROP TRIGGER IF EXISTS reviews_gate_notify_insert ON reviews_gate;
DROP TRIGGER IF EXISTS reviews_gate_notify_update ON reviews_gate;
DROP FUNCTION IF EXISTS sluice_gate_notify();
"""


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTION)
        schema_editor.execute(TRIGGERS)


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("reviews", "0005_notifications"),
        ("workflows", "0001_initial"),
    ]

    operations = [migrations.RunPython(create, drop, elidable=False)]
