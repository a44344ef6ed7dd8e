"""Operators' reads of bindings: pages by province and state, newest first, one binding with its messages, and one
binding's quota with its consumptions and notices."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.domain import reasons
from gateway.domain.bindings import Binding, BindingState
from gateway.domain.errors import InvalidArgument
from gateway.domain.monitoring import BindingInspection, BindingPage
from gateway.domain.outbox import OutboxKind, OutboxRecord
from gateway.domain.provinces import validate_province_code
from gateway.domain.transfers import validate_message_id
from gateway.usecases.bindings import binding_not_found
from gateway.usecases.context import UseCaseContext
from gateway.usecases.monitoring import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, position_token, token_position
from gateway.usecases.quotas import QuotaView, read_quota

# The messages about a binding; a transfer's id may equal a binding's, and its messages are not this one's.
BINDING_MESSAGES = (OutboxKind.REQUEST_CONSENT, OutboxKind.NOTIFY_BINDING_OUTCOME)
QUOTA_MESSAGES = (OutboxKind.NOTIFY_QUOTA, OutboxKind.NOTIFY_CONSUMPTION)
# A quota has two notices per draw and grows without bound; an inspection shows the newest ones.
NEWEST_NOTICES = 50


@dataclass(frozen=True, slots=True)
class QuotaInspection:
    binding: Binding
    quota: QuotaView
    messages: tuple[OutboxRecord, ...]  # the newest notices about its quota, oldest first


def list_bindings(ctx: UseCaseContext, province: str, states: Sequence[BindingState], page_token: str,
                  page_size: int) -> BindingPage:
    """One page newest first by (created_at, binding_id); the token resumes after the last one shown, exactly,
    while bindings are proposed (new ones come before the first page)."""
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be within 0..{MAX_PAGE_SIZE}", reason=reasons.INVALID_PAGE_SIZE,
                              field="page_size")
    if province:
        validate_province_code(province, "province")
    size = page_size or DEFAULT_PAGE_SIZE
    before = token_position(page_token) if page_token else None
    with ctx.uow(read_only=True) as uow:
        rows = uow.bindings.page(province, tuple(dict.fromkeys(states)), before, size + 1)
    more = len(rows) > size
    rows = rows[:size]
    return BindingPage(rows, position_token(rows[-1].created_at, rows[-1].binding_id) if more else "")


def inspect_binding(ctx: UseCaseContext, binding_id: str) -> BindingInspection:
    """One binding (masked ID numbers only) with the messages owed to the provinces about it."""
    validate_message_id(binding_id, field="binding_id")
    with ctx.uow(read_only=True) as uow:
        binding = uow.bindings.get(binding_id)
        messages = uow.outbox.of_subject(binding_id, BINDING_MESSAGES, NEWEST_NOTICES) if binding is not None else []
    if binding is None:
        raise binding_not_found()
    return BindingInspection(binding, tuple(messages))


def inspect_quota(ctx: UseCaseContext, binding_id: str, page_size: int, page_token: str) -> QuotaInspection:
    """One binding's quota (masked ID numbers only): its figures, a page of its consumptions, the newest
    notices about it."""
    validate_message_id(binding_id, field="binding_id")
    with ctx.uow(read_only=True) as uow:
        binding = uow.bindings.get(binding_id)
        if binding is None:
            raise binding_not_found()
        view = read_quota(uow, binding_id, page_size, page_token)
        messages = uow.outbox.of_subject(binding_id, QUOTA_MESSAGES, NEWEST_NOTICES)
    return QuotaInspection(binding, view, tuple(messages))
