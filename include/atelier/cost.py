"""What a campaign cost, per provider: calls made, render seconds, worker slot seconds and money.

Measured where the work happens, recorded raw in the ledger (``sql/012_cost.sql``), priced when shown
with the price table of ``config/providers.json`` (``"price": {"per_call", "per_second",
"per_image", "currency"}``, every field optional, checked when the file is loaded):

- **calls**: every HTTP request a remote provider's client sends (retries, polls and output fetches
  included), counted by an httpx request hook on the provider's clients (``meter_clients``) into the
  ``Meter`` of the render being worked on (a context variable: each render thread, and each trigger
  poll, has its own); for the in-process studio renderer, one render invocation is one call.
- **render seconds**: time a provider spent producing the image: the provider's render call (sync),
  or submit → the trigger seeing the job finished (deferred).
- **worker slot seconds**: start → end of a shard's work in a task (``slot``), per stretch; the
  time a deferred shard waits in the triggerer holds no worker slot and is not counted.
- **money** = calls × per_call + render seconds × per_second + images × per_image (images: outputs a
  provider delivered), at the provider's price.

Who owns a number: one claim of one render (its lease owner and attempt) owns what that claim spent,
written once by the lease holder before it records the outcome (``record_render``); a retry or a
takeover is a new claim, a worker that lost its lease writes nothing, so nothing is counted twice.
A re-used render (skipped at plan time: its output existed) costs nothing here and is shown as a
**saving**: what its original render cost, at its providers' prices.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from decimal import Decimal
from typing import Any

from atelier.pricing import DEFAULT_CURRENCY, Price, parse_price

# -- the price table ---------------------------------------------------------------------------------


def price(provider: str) -> Price:
    """The provider's price; a provider no longer configured (an old campaign's) costs nothing."""
    from atelier import providers

    cfg = providers.configs().get(provider)
    return parse_price(provider, cfg.get("price")) if cfg else Price()


# -- measuring ---------------------------------------------------------------------------------------


# -- recording ---------------------------------------------------------------------------------------
def claim_id(owner: str, attempt: int) -> str:
    return f"{owner}@{attempt}"


def record_render(
    conn: Any, campaign_id: str, sku: str, spec: str, owner: str, attempt: int, rows: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Writes what this claim of the render spent, once, only while ``owner`` holds its lease (call
    it before recording the outcome). Returns the rows written now ([] if the lease was lost or the
    claim was written before)."""
    rows = [r for r in rows if r["calls"] or r["render_ms"] or r["images"]]
    if not rows:
        return []
    written = []
    with conn.cursor() as cur:
        for r in rows:
            cur.execute(
                """INSERT INTO render_costs (campaign_id, sku, spec, claim, provider, calls, render_ms, images)
                   SELECT %s, %s, %s, %s, %s, %s, %s, %s
                   WHERE EXISTS (SELECT 1 FROM renders WHERE campaign_id = %s AND sku = %s AND spec = %s
                                   AND state = 'running' AND lease_owner = %s)
                   ON CONFLICT DO NOTHING RETURNING provider""",
                (
                    campaign_id,
                    sku,
                    spec,
                    claim_id(owner, attempt),
                    r["provider"],
                    int(r["calls"]),
                    int(r["render_ms"]),
                    int(r["images"]),
                    campaign_id,
                    sku,
                    spec,
                    owner,
                ),
            )
            if cur.fetchone() is not None:
                written.append(r)
    conn.commit()
    return written


def record_slot(
    conn: Any, campaign_id: str, shard: int, owner: str, segment: int, provider: str, seconds: float
) -> bool:
    """Writes one stretch of worker slot time of a shard (once per owner and stretch)."""
    with conn.cursor() as cur:
        cur.execute(
            """INSERT INTO shard_costs (campaign_id, shard, owner, segment, provider, slot_ms)
               VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            (campaign_id, shard, owner, segment, provider, max(0, round(seconds * 1000))),
        )
        ok = cur.rowcount == 1
    conn.commit()
    return ok


@contextmanager
def slot(
    res: Any,
    campaign_id: str,
    shard: int,
    owner: str,
    segment: int,
    provider: str,
    brand: str,
    started: float | None = None,
) -> Iterator[None]:
    """Times the block (from ``started``, a ``time.monotonic()``, if given) as worker slot time of
    the shard and records it when the block ends, however it ends (an error still held the slot).
    Best effort: a ledger that is down loses the figure, never the shard's own outcome."""
    started = time.monotonic() if started is None else started
    try:
        yield
    finally:
        seconds = time.monotonic() - started
        try:
            with res.lock:
                res.conn.rollback()  # an aborted transaction (the error being raised) must not block this
                written = record_slot(res.conn, campaign_id, shard, owner, segment, provider, seconds)
        except Exception:
            written = False
        if written:
            from atelier import metrics

            metrics.slot_spent(provider, brand, seconds)


def rendered_spent(conn: Any, lock: Any, brand: str, campaign_id: str, c: Any, owner: str, rows: Any) -> None:
    """``record_render`` for a claimed render ``c`` (a ``ledger.Claimed``) and the statsd counters
    of what was written now. ``rows``: ``Meter.spent`` rows, or None (nothing measured)."""
    if not rows:
        return
    with lock:
        written = record_render(conn, campaign_id, c.sku, c.spec, owner, c.attempts, rows)
    if written:
        from atelier import metrics

        for r in written:
            money = price(r["provider"]).of(r["calls"], r["render_ms"], r["images"])
            metrics.render_spent(r["provider"], brand, r["calls"], r["render_ms"] / 1000, float(money))


# -- reading and pricing -----------------------------------------------------------------------------
def _money(amount: Decimal) -> float:
    return float(round(amount, 6))


def display(totals: dict[str, float]) -> str:
    """Money as a person reads it: ``$0.0123`` (dollars), ``0.0123 EUR`` otherwise."""
    parts = []
    for cur, amount in sorted(totals.items()):
        shown = f"{amount:,.2f}" if amount >= 100 else f"{amount:.4f}"
        parts.append(f"${shown}" if cur == "USD" else f"{shown} {cur}")
    return " + ".join(parts) or "$0.0000"


def campaign_costs(conn: Any, campaign_ids: list[str]) -> dict[str, dict[str, Any]]:
    """What each campaign cost so far, per provider, priced now: campaigns with nothing measured
    and nothing re-used are absent (shown as "not recorded")."""
    if not campaign_ids:
        return {}
    spent: dict[str, dict[str, dict[str, Any]]] = {}

    def entry(cid: str, provider: str) -> dict[str, Any]:
        return spent.setdefault(cid, {}).setdefault(
            provider, {"calls": 0, "renders": 0, "images": 0, "render_ms": 0, "slot_ms": 0}
        )

    with conn.cursor() as cur:
        cur.execute(
            """SELECT campaign_id, provider, sum(calls), sum(render_ms), sum(images), count(DISTINCT (sku, spec))
               FROM render_costs WHERE campaign_id = ANY(%s) GROUP BY 1, 2""",
            (campaign_ids,),
        )
        for cid, provider, calls, ms, images, renders in cur.fetchall():
            e = entry(cid, provider)
            e.update(calls=int(calls), render_ms=int(ms), images=int(images), renders=int(renders))
        cur.execute(
            "SELECT campaign_id, provider, sum(slot_ms) FROM shard_costs WHERE campaign_id = ANY(%s) GROUP BY 1, 2",
            (campaign_ids,),
        )
        for cid, provider, ms in cur.fetchall():
            entry(cid, provider)["slot_ms"] = int(ms)
        saved = _savings(cur, campaign_ids)
    conn.rollback()
    out = {}
    for cid in campaign_ids:
        if cid in spent or cid in saved:
            out[cid] = summary(spent.get(cid, {}), saved.get(cid))
    return out


def campaign_cost(conn: Any, campaign_id: str) -> dict[str, Any] | None:
    return campaign_costs(conn, [campaign_id]).get(campaign_id)


def _savings(cur: Any, campaign_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Re-used renders of each campaign and what their original renders cost (the render that made
    the output, in the campaign that made it first). An original with no measurement (made before
    costs were recorded, or adopted from a dead worker's write) is priced at its provider's
    per-image price alone and counted as ``estimated``."""
    cur.execute(
        """WITH reused AS (
             SELECT r.campaign_id, r.sku, r.spec, o.render_key AS okey, o.campaign_id AS made_in,
                    COALESCE(o.served_by, c.provider) AS served_by
             FROM renders r JOIN campaigns c USING (campaign_id)
             JOIN outputs o ON o.render_key = COALESCE(r.output_render_key, r.render_key)
             WHERE r.campaign_id = ANY(%s) AND r.state = 'skipped'),
           original AS (
             SELECT DISTINCT ON (u.campaign_id, u.sku, u.spec) u.campaign_id, u.sku, u.spec, u.served_by,
                    p.campaign_id AS pc, p.sku AS ps, p.spec AS pspec
             FROM reused u LEFT JOIN renders p
               ON p.campaign_id = u.made_in AND p.output_render_key = u.okey AND p.state = 'succeeded'
             ORDER BY u.campaign_id, u.sku, u.spec, p.finished_at NULLS LAST)
           SELECT x.campaign_id, x.sku, x.spec, x.served_by, rc.provider, rc.calls, rc.render_ms, rc.images
           FROM original x LEFT JOIN render_costs rc ON rc.campaign_id = x.pc AND rc.sku = x.ps AND rc.spec = x.pspec""",
        (campaign_ids,),
    )
    per_render: dict[tuple[str, str, str], dict[str, Any]] = {}
    for cid, sku, spec, served_by, provider, calls, ms, images in cur.fetchall():
        r = per_render.setdefault((cid, sku, spec), {"served_by": served_by, "money": {}, "measured": False})
        if provider is None:
            continue
        p = price(provider)
        r["money"][p.currency] = r["money"].get(p.currency, Decimal(0)) + p.of(calls, ms, images)
        r["measured"] = True
    out: dict[str, dict[str, Any]] = {}
    for (cid, _, _), r in per_render.items():
        s = out.setdefault(cid, {"renders": 0, "estimated": 0, "money": {}})
        s["renders"] += 1
        if not r["measured"]:
            p = price(r["served_by"])
            r["money"] = {p.currency: p.per_image}
            s["estimated"] += 1
        for cur_, amount in r["money"].items():
            s["money"][cur_] = s["money"].get(cur_, Decimal(0)) + amount
    return out


def summary(spent: dict[str, dict[str, Any]], saved: dict[str, Any] | None) -> dict[str, Any]:
    """The cost document (report.json's ``cost``, the pages' cost): per provider its measurements,
    price and money; totals per currency; what re-use saved."""
    providers: dict[str, Any] = {}
    totals: dict[str, Decimal] = {}
    for name, e in sorted(spent.items()):
        p = price(name)
        money = p.of(e["calls"], e["render_ms"], e["images"])
        totals[p.currency] = totals.get(p.currency, Decimal(0)) + money
        providers[name] = {
            "calls": e["calls"],
            "renders": e["renders"],
            "images": e["images"],
            "render_seconds": round(e["render_ms"] / 1000, 3),
            "slot_seconds": round(e["slot_ms"] / 1000, 3),
            "money": _money(money),
            "currency": p.currency,
            "price": p.as_dict(),
        }
    saved = saved or {"renders": 0, "estimated": 0, "money": {}}
    total = {c: _money(v) for c, v in totals.items()} or {DEFAULT_CURRENCY: 0.0}
    saved_money = {c: _money(v) for c, v in saved["money"].items()}
    return {
        "providers": providers,
        "calls": sum(e["calls"] for e in providers.values()),
        "render_seconds": round(sum(e["render_seconds"] for e in providers.values()), 3),
        "slot_seconds": round(sum(e["slot_seconds"] for e in providers.values()), 3),
        "total": total,
        "saved": {"renders": saved["renders"], "estimated": saved["estimated"], "money": saved_money},
        "display": display(total),
        "saved_display": display(saved_money) if saved["renders"] else None,
    }


def saved_metrics(brand: str, cost: dict[str, Any] | None, provider: str) -> None:
    """statsd: what re-use saved this campaign (sent once, at its first finalize)."""
    if not cost or not cost["saved"]["renders"]:
        return
    from atelier import metrics

    with suppress(Exception):
        metrics.cost_saved(provider, brand, sum(cost["saved"]["money"].values()))
