"""Blob references: a value is read out of row only where the engine put the reference.

Values that come from outside (run input, events, defaults, gate decisions) are data: a dict
that looks like ``{"$blob": id}`` reads back as that dict, never as another run's stored value.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

import tests.workflows.blob_workflows  # noqa: F401  (registers the workflows)
from tests import sample_workflows as samples
from tests.support import Bell
from workflows import get_run, send_event, start
from workflows.core.executor import advance
from workflows.core.payloads import ForeignBlobError, pack, unpack
from workflows.models import Blob, Run, Step

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _small_inline_limit(settings: Any) -> None:
    settings.SLUICE_PAYLOAD_INLINE_LIMIT = 100
    settings.SLUICE_PAYLOAD_HARD_LIMIT = 100_000


def secret_blob(bell: Bell) -> Blob:
    """Another tenant's large output, stored as a blob of its run."""
    run = start("blobs.document", {"n": 50}, tenant="acme")
    bell.drain()
    assert get_run(run.pk).status == "succeeded"
    return Blob.objects.filter(run=run).latest("pk")


def test_it_refuses_to_unpack_a_blob_of_another_run(bell: Bell) -> None:
    blob = secret_blob(bell)
    mine = start(samples.chain, {"n": 1}, tenant="other")
    with pytest.raises(ForeignBlobError, match="does not belong to run"):
        unpack({"$blob": blob.pk, "size": blob.size}, mine.pk)
    with pytest.raises(ForeignBlobError):
        unpack({"$blob": blob.pk + 1_000_000}, mine.pk)
    with pytest.raises(ForeignBlobError):
        unpack({"$blob": "1"}, mine.pk)
    # Its own run reads it.
    assert unpack({"$blob": blob.pk, "size": blob.size}, blob.run_id)["text"].startswith("secret")


def test_a_dict_that_looks_like_a_reference_round_trips_as_data() -> None:
    looks_like = [
        {"$blob": 1},
        {"$blob": 1, "size": 2},
        {"$literal": 3},
        {"$literal": {"$blob": 1}},
    ]
    for value in looks_like:
        column, blob = pack(value, run_id=None)
        assert blob is None
        assert unpack(column, None) == value


def test_an_event_payload_is_never_read_as_a_reference(bell: Bell) -> None:
    blob = secret_blob(bell)
    run = start("blobs.echo_event", {}, tenant="other")
    bell.drain()
    send_event(run.pk, "go", {"$blob": blob.pk})
    bell.drain()
    run = get_run(run.pk)
    assert run.status == "succeeded"
    assert unpack(run.output, run.pk) == {"$blob": blob.pk}


def test_an_event_sent_before_the_wait_is_never_read_as_a_reference(bell: Bell) -> None:
    blob = secret_blob(bell)
    run = start("blobs.echo_event", {}, tenant="other")
    send_event(run.pk, "go", {"$blob": blob.pk, "size": 1})
    bell.drain()
    run = get_run(run.pk)
    assert unpack(run.output, run.pk) == {"$blob": blob.pk, "size": 1}


def test_run_input_is_never_read_as_a_reference(bell: Bell) -> None:
    blob = secret_blob(bell)
    run = start("blobs.echo_input", {"doc": {"$blob": blob.pk}}, tenant="other")
    bell.drain()
    run = get_run(run.pk)
    assert run.status == "succeeded", run.error
    assert unpack(run.output, run.pk) == {"$blob": blob.pk}
    step = Step.objects.get(run=run, kind="step")
    assert unpack(step.result, run.pk) == {"$blob": blob.pk}


def test_a_wait_default_is_never_read_as_a_reference(bell: Bell) -> None:
    from workflows.core.sweeper import sweep

    blob = secret_blob(bell)
    run = start("blobs.echo_default", {"default": {"$blob": blob.pk}}, tenant="other")
    bell.drain()
    Step.objects.filter(run=run, kind="event").update(wake_at=timezone.now() - timedelta(seconds=1))
    sweep()
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "succeeded", run.error
    assert unpack(run.output, run.pk) == {"$blob": blob.pk}


def test_a_forged_reference_in_the_journal_fails_the_run_without_reading(bell: Bell) -> None:
    """Even a reference that slipped past the escaping (written straight into a column) is
    refused: the run fails with a clear error, and the other run's data is not read."""
    blob = secret_blob(bell)
    run = start("blobs.echo_event", {}, tenant="other")
    bell.drain()
    Step.objects.filter(run=run, kind="event").update(
        status="succeeded", result={"$blob": blob.pk, "size": blob.size}
    )
    advance(run.pk, run.generation)
    run = get_run(run.pk)
    assert run.status == "failed"
    assert run.error["type"] == "ForeignBlobError"
    assert "secret" not in str(run.output) + str(run.error)


def test_a_large_child_output_is_handed_over_to_its_parent(bell: Bell) -> None:
    run = start("blobs.parent", {"n": 50})
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "succeeded", run.error
    assert run.output == {"length": len("secret " * 50)}
    child = Run.objects.get(parent=run)
    step = Step.objects.get(run=run, kind="child")
    # The parent's journal holds the child's own reference: nothing was copied.
    assert step.result == child.output and "$blob" in step.result
    assert Blob.objects.get(pk=step.result["$blob"]).run_id == child.pk


def test_large_branch_results_come_back_to_their_run(bell: Bell) -> None:
    run = start("blobs.fan_out", {"n": 50})
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "succeeded", run.error
    assert run.output == [len("secret " * 50)] * 2
    assert Blob.objects.filter(run=run).count() == 2


def test_the_child_hand_over_does_not_open_other_runs(bell: Bell) -> None:
    blob = secret_blob(bell)
    run = start("blobs.parent", {"n": 50})
    bell.settle()
    step = Step.objects.get(run=get_run(run.pk), kind="child")
    with pytest.raises(ForeignBlobError):
        unpack({"$blob": blob.pk}, run.pk, child_step=step.pk)


def test_the_run_page_links_a_large_child_output_where_it_is_stored(
    bell: Bell, admin_client: Any
) -> None:
    run = start("blobs.parent", {"n": 50})
    bell.settle()
    child = Run.objects.get(parent=run)
    step = Step.objects.get(run=run, kind="child")
    page = admin_client.get(f"/runs/{run.pk}/").content.decode()
    # Linked through the parent, which was handed it (one who sees the parent may not see the
    # child); the child's own page links it too.
    url = f"/runs/{run.pk}/values/{step.result['$blob']}/"
    assert url in page
    assert admin_client.get(url).json()["text"].startswith("secret")
    own = f"/runs/{child.pk}/values/{step.result['$blob']}/"
    assert admin_client.get(own).json()["text"].startswith("secret")
    # only the handed-over output: the child's other values stay the child's
    others = Blob.objects.filter(run=child).exclude(pk=step.result["$blob"])
    for blob in others:
        assert admin_client.get(f"/runs/{run.pk}/values/{blob.pk}/").status_code == 404
