"""Operators' ListTransfers and GetStats over real channels, on each database."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from protos.gongji.v1 import operations_pb2, transfers_pb2
from tests.support import GANSU, XINJIANG, Stack, error_of, wait_until


def list_all(stack: Stack, page_size: int, **filters: object) -> list[str]:
    seen: list[str] = []
    token = ""
    while True:
        page = stack.operations.ListTransfers(operations_pb2.ListTransfersRequest(
            page_size=page_size, page_token=token, **filters), timeout=10)  # type: ignore[arg-type]
        seen += [t.transfer_id for t in page.transfers]
        token = page.next_page_token
        if not token:
            return seen


def test_pagination_returns_every_transfer_exactly_once_while_new_ones_arrive(stack: Stack) -> None:
    """New transfers arrive between every two pages (one after each page, in step, so none can all come before
    the listing starts): nothing that existed is missed, nothing is listed twice."""
    first = [stack.submit(stack.instruction()).transfer_id for _ in range(25)]
    later: list[str] = []
    seen: list[str] = []
    token = ""
    while True:
        page = stack.operations.ListTransfers(operations_pb2.ListTransfersRequest(page_size=2, page_token=token),
                                              timeout=10)
        seen += [t.transfer_id for t in page.transfers]
        token = page.next_page_token
        if not token:
            break
        later.append(stack.submit(stack.instruction()).transfer_id)
    assert len(later) >= 12, "transfers arrived while the pages were read"
    assert len(seen) == len(set(seen)), "a transfer was listed twice"
    assert set(first) <= set(seen), "a transfer that existed before the listing began was missed"
    assert set(seen) <= set(first) | set(later)
    assert sorted(list_all(stack, page_size=1000)) == sorted(first + later)


def pages(stack: Stack, order: int, between_pages: Callable[[], None] = lambda: None,
          **filters: object) -> list[str]:
    """Every transfer, two a page, in `order`; `between_pages` runs after the first page."""
    seen: list[str] = []
    token = ""
    while True:
        page = stack.operations.ListTransfers(operations_pb2.ListTransfersRequest(
            page_size=2, page_token=token, order=order, **filters), timeout=10)  # type: ignore[arg-type]
        seen += [t.transfer_id for t in page.transfers]
        token = page.next_page_token
        if not token:
            return seen
        if len(seen) == 2:
            between_pages()


def test_newest_first_by_default_oldest_first_on_request_exact_while_transfers_arrive(stack: Stack) -> None:
    first = [stack.submit(stack.instruction()).transfer_id for _ in range(5)]
    later: list[str] = []

    def three_more() -> None:
        later.extend(stack.submit(stack.instruction()).transfer_id for _ in range(3))

    # Newest first (the default, and by name): what arrives meanwhile comes before the first page, so the pages
    # hold exactly the transfers there were, newest first.
    assert pages(stack, operations_pb2.TRANSFER_ORDER_UNSPECIFIED, three_more) == first[::-1]
    there = first + later
    assert pages(stack, operations_pb2.TRANSFER_ORDER_NEWEST_FIRST, three_more) == there[::-1]
    # Oldest first: what arrives meanwhile comes at the end, in the same pages.
    assert pages(stack, operations_pb2.TRANSFER_ORDER_OLDEST_FIRST, three_more) == first + later
    assert len(later) == 9

    # A time range, either way: created at or after the third, before the fifth.
    views = {t.transfer_id: t for t in stack.operations.ListTransfers(
        operations_pb2.ListTransfersRequest(page_size=100), timeout=10).transfers}
    since, until = views[first[2]].created_at, views[first[4]].created_at
    assert pages(stack, operations_pb2.TRANSFER_ORDER_NEWEST_FIRST, created_from=since, created_to=until) == \
        [first[3], first[2]]
    assert pages(stack, operations_pb2.TRANSFER_ORDER_OLDEST_FIRST, created_from=since, created_to=until) == \
        [first[2], first[3]]
    seen = error_of(lambda: stack.operations.ListTransfers(operations_pb2.ListTransfersRequest(order=3), timeout=5))
    assert (seen.code, seen.reason, seen.metadata.get("field")) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ORDER",
                                                                    "order")


def test_filters_and_bad_requests(stack: Stack) -> None:
    stack.configure(GANSU, reject_reason="RECEIVER_NOT_INSURED")
    rejected = stack.submit(stack.instruction()).transfer_id
    stack.wait_for_state(rejected, transfers_pb2.TRANSFER_STATE_REJECTED)
    assert list_all(stack, 10, states=[transfers_pb2.TRANSFER_STATE_REJECTED]) == [rejected]
    assert list_all(stack, 10, giver_province=GANSU) == []
    assert rejected in list_all(stack, 10, giver_province=XINJIANG, receiver_province=GANSU)
    for request, reason in ((operations_pb2.ListTransfersRequest(page_size=1001), "INVALID_PAGE_SIZE"),
                            (operations_pb2.ListTransfersRequest(page_token="not-a-token"), "INVALID_PAGE_TOKEN"),
                            (operations_pb2.ListTransfersRequest(giver_province="6500"), "INVALID_PROVINCE_CODE")):
        seen = error_of(lambda r=request: stack.operations.ListTransfers(r, timeout=5))
        assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)


def test_stats_count_transfers_by_pair_and_state_and_show_the_outbox(stack: Stack) -> None:
    for _ in range(3):
        stack.wait_for_state(stack.submit(stack.instruction(amount_fen=1000)).transfer_id,
                             transfers_pb2.TRANSFER_STATE_COMMITTED)
    stack.wait_for_outbox_idle(XINJIANG)
    stack.wait_for_outbox_idle(GANSU)
    stats = stack.operations.GetStats(operations_pb2.GetStatsRequest(), timeout=5)
    committed = [s for s in stats.transfers if s.state == transfers_pb2.TRANSFER_STATE_COMMITTED]
    assert [(s.giver_province, s.receiver_province, s.count, s.amount_fen) for s in committed] == [
        (XINJIANG, GANSU, 3, 3000)]
    assert stats.outbox_backlog == 0 and not stats.HasField("oldest_undelivered")

    stack.configure(GANSU, fail_next_calls=1000)
    stack.submit(stack.instruction())
    stats = wait_until(lambda: (s := stack.operations.GetStats(operations_pb2.GetStatsRequest(), timeout=5))
                       .delivery_failures and any(f.province == GANSU and f.failed_attempts >= 2
                                                  for f in s.delivery_failures) and s, what="failures counted")
    assert stats.outbox_backlog >= 1 and stats.HasField("oldest_undelivered")
