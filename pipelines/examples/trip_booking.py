"""trip_booking: a saga. Book a flight, a hotel and a car; if a later booking fails (or the run
is canceled), the bookings already made are cancelled, last one first.

Two forms of the same workflow:

- ``examples.trip_booking``: code-first, ``ctx.run(book, trip, compensate=cancel)``;
- ``examples.trip_booking_machine``: a state machine whose states carry ``compensate=``.

The bookings are simulated (no outside service): each booking returns a reference, each
cancellation echoes the reference it cancels. List the services to refuse in the input's
``unavailable`` (e.g. ``["car"]``) to see the compensation: the car fails, then the hotel and
the flight are cancelled in that order, each as its own journal entry ("undo: cancel_hotel"
on the run page), and the run ends failed with the car's error.

Load it with ``SLUICE_WORKFLOW_MODULES=pipelines.examples.trip_booking``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipelines.dsl import final, state
from pipelines.machine import machine
from workflows import NonRetryableError, RetryPolicy, step, workflow


class Trip(BaseModel):
    model_config = ConfigDict(extra="forbid")

    traveller: str = Field("Ada Lovelace", min_length=1, max_length=200)
    destination: str = Field("Lisbon", min_length=1, max_length=200)
    nights: int = Field(3, ge=1, le=60)
    # Simulated refusals: the services named here answer "nothing available".
    unavailable: list[str] = Field(default_factory=list, max_length=3)


def _reference(service: str, trip: dict[str, Any]) -> str:
    seed = f"{service}:{trip.get('traveller')}:{trip.get('destination')}:{trip.get('nights')}"
    return f"{service[:1].upper()}-{hashlib.blake2b(seed.encode(), digest_size=4).hexdigest()}"


def _book(service: str, trip: dict[str, Any]) -> dict[str, Any]:
    if service in trip.get("unavailable", []):
        raise NonRetryableError(f"no {service} available for {trip.get('destination')}")
    return {service: _reference(service, trip)}


QUICK = RetryPolicy(max_attempts=3, initial_backoff=0.5, max_backoff=5)


@step(retry=QUICK)
def cancel_flight(trip: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {"cancelled": result["flight"]}


@step(retry=QUICK)
def cancel_hotel(trip: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {"cancelled": result["hotel"]}


@step(retry=QUICK)
def cancel_car(trip: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {"cancelled": result["car"]}


@step(retry=QUICK, compensate=cancel_flight)
def book_flight(trip: dict[str, Any]) -> dict[str, Any]:
    return _book("flight", trip)


@step(retry=QUICK)
def book_hotel(trip: dict[str, Any]) -> dict[str, Any]:
    return _book("hotel", trip)


@step(retry=QUICK, compensate=cancel_car)
def book_car(trip: dict[str, Any]) -> dict[str, Any]:
    return _book("car", trip)


@workflow(name="examples.trip_booking", input_model=Trip)
def trip_booking(
    ctx: Any, traveller: str, destination: str, nights: int, unavailable: list[str]
) -> dict[str, Any]:
    """Book a flight, a hotel and a car; cancel what was booked if a booking fails."""
    trip = {
        "traveller": traveller,
        "destination": destination,
        "nights": nights,
        "unavailable": unavailable,
    }
    booked: dict[str, Any] = {}
    booked |= ctx.run(book_flight, trip)  # its undo comes with the step: @step(compensate=)
    booked |= ctx.run(book_hotel, trip, compensate=cancel_hotel)  # or with the call
    booked |= ctx.run(book_car, trip)
    return booked


trip_booking_machine = machine(
    id="examples.trip_booking_machine",
    title="Trip booking (saga)",
    description="Book a flight, a hotel and a car; cancel the bookings made if one fails.",
    initial="flight",
    input_model=Trip,
    states={
        "flight": state(run=book_flight, on_done="hotel"),  # undo from @step(compensate=)
        "hotel": state(run=book_hotel, compensate=cancel_hotel, on_done="car"),
        "car": state(run=book_car, on_done="booked"),
        "booked": final(),
    },
    sample_input={"traveller": "Ada Lovelace", "destination": "Lisbon", "nights": 3},
)
