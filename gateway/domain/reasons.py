"""The catalogue of error reasons (ErrorInfo.reason): each once, with the error that carries it and when it happens."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.domain.errors import (
    AlreadyExists,
    Contention,
    DatabaseBusy,
    DatabaseUnavailable,
    FailedPrecondition,
    GongjiError,
    InvalidArgument,
    ModifiedRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    RequestInFlight,
    Unauthenticated,
    Unavailable,
)


@dataclass(frozen=True, slots=True)
class Reason:
    """A stable reason: the error raised with it by name (None: a rule's verdict only), the rule whose verdict it
    is ("" for none: eligibility D1-D6 and the transfer limits D10, D12 are computed), and when it happens."""

    name: str
    kind: type[GongjiError] | None
    when: str
    rule: str = ""


CATALOGUE: dict[str, Reason] = {}


def _reason(name: str, kind: type[GongjiError] | None, when: str, *, rule: str = "") -> str:
    assert name not in CATALOGUE, f"{name} is catalogued twice"
    CATALOGUE[name] = Reason(name, kind, when, rule)
    return name


# -- the envelope and its caller (api.md, the verification order) ------------------------------------------
NO_IDENTITY = _reason("NO_IDENTITY", PermissionDenied,
                      "the client certificate names no Gongji identity (no gongji: URI)")
NOT_A_PROVINCE = _reason("NOT_A_PROVINCE", PermissionDenied,
                         "a certificate other than a province's calls a province's service")
NOT_AN_OPERATOR = _reason("NOT_AN_OPERATOR", PermissionDenied,
                          "a certificate other than an operator's calls the Operations service")
MALFORMED_REQUEST = _reason("MALFORMED_REQUEST", InvalidArgument,
                            "the request bytes do not parse as the method's request message")
ALGORITHM_NOT_ALLOWED = _reason("ALGORITHM_NOT_ALLOWED", Unauthenticated, "the envelope's alg is not ed25519")
UNKNOWN_KEY = _reason("UNKNOWN_KEY", Unauthenticated, "no registered key has the envelope's key_id")
KEY_NOT_OWNED_BY_SIGNER = _reason("KEY_NOT_OWNED_BY_SIGNER", Unauthenticated,
                                  "the key_id belongs to another province than the signer")
KEY_NOT_ACTIVE = _reason("KEY_NOT_ACTIVE", Unauthenticated,
                         "the key is retired, expired or not yet valid at the gateway's time")
BAD_SIGNATURE = _reason("BAD_SIGNATURE", Unauthenticated, "the signature does not verify with the signer's key")
SIGNER_NOT_CALLER = _reason("SIGNER_NOT_CALLER", PermissionDenied,
                            "the envelope's signer is not the province the TLS certificate names (D20)")
RATE_LIMITED = _reason("RATE_LIMITED", RateLimited,
                       "the province has spent its request budget (or VerifyRelation's own) for now: nothing was "
                       "done, retry later with the same message_id")
WRONG_PAYLOAD_TYPE = _reason("WRONG_PAYLOAD_TYPE", InvalidArgument,
                             "the envelope's payload_type is not the message this RPC takes")
MALFORMED_PAYLOAD = _reason("MALFORMED_PAYLOAD", InvalidArgument,
                            "the signed payload does not parse as the message its payload_type names")
UNKNOWN_FIELDS = _reason("UNKNOWN_FIELDS", InvalidArgument,
                         "the signed payload has fields the contract does not define")
SENDER_NOT_SIGNER = _reason("SENDER_NOT_SIGNER", PermissionDenied, "header.sender is not the envelope's signer (D20)")
STALE_MESSAGE = _reason("STALE_MESSAGE", InvalidArgument,
                        "header.created_at is outside the accepted window around the gateway's clock, and the "
                        "message is not a resend of one already answered")
WRONG_RECEIVER = _reason("WRONG_RECEIVER", InvalidArgument,
                         "a message the gateway answers itself does not name gateway as header.receiver")

# -- idempotency and concurrency (D15) --------------------------------------------------------------------
MODIFIED_REQUEST = _reason("MODIFIED_REQUEST", ModifiedRequest,
                           "the (sender, message_id) was used before with different payload bytes")
REQUEST_IN_FLIGHT = _reason("REQUEST_IN_FLIGHT", RequestInFlight,
                            "the same (sender, message_id) is being processed right now: retry with the same one")
CONTENTION = _reason("CONTENTION", Contention,
                     "the database gave up on the transaction because of another one, after the gateway's own "
                     "retries: nothing was changed, retry")
DATABASE_BUSY = _reason("DATABASE_BUSY", DatabaseBusy,
                        "another connection held a lock the call needs (SQLite's write lock, a PostgreSQL table or "
                        "row lock) for longer than GONGJI_DATABASE_BUSY_SECONDS (default 5): nothing was done, retry "
                        "later with the same message_id")
DATABASE_UNAVAILABLE = _reason("DATABASE_UNAVAILABLE", DatabaseUnavailable,
                               "the gateway cannot reach its database, or lost its connection to it during the "
                               "call (a restart): retry with the same message_id, which executes once")
SHUTTING_DOWN = _reason("SHUTTING_DOWN", Unavailable,
                        "the gateway is stopping: nothing was done, retry later or on another gateway")

# -- fields -----------------------------------------------------------------------------------------------
MISSING_FIELD = _reason("MISSING_FIELD", InvalidArgument,
                        "a required field is absent (the header, its created_at, a transfer's binding_id, an "
                        "acceptance's attestation, a province's keys)")
INVALID_MESSAGE_ID = _reason("INVALID_MESSAGE_ID", InvalidArgument,
                             "an id (message, transfer, binding) is not 1-64 characters of [A-Za-z0-9._:-]")
INVALID_TIMESTAMP = _reason("INVALID_TIMESTAMP", InvalidArgument,
                            "a timestamp is out of range, or a commitment's accepted_at is missing or in the future")
INVALID_PROVINCE_CODE = _reason("INVALID_PROVINCE_CODE", InvalidArgument,
                                "a province code is not six digits ending in 0000")
NOT_CROSS_PROVINCE = _reason("NOT_CROSS_PROVINCE", InvalidArgument,
                             "giver and receiver are insured in the same province: the gateway carries "
                             "cross-province transfers and relations only")
INVALID_POOLING_AREA = _reason("INVALID_POOLING_AREA", InvalidArgument,
                               "a pooling area is not six digits within the province that insures the person")
INVALID_ID_NUMBER = _reason("INVALID_ID_NUMBER", InvalidArgument,
                            "an ID number is not a valid resident ID number on the day (D1: length, region, birth "
                            "date, check character)", rule="D1")
SAME_PERSON = _reason("SAME_PERSON", InvalidArgument, "the receiver is the giver (D2)", rule="D2")
INVALID_AMOUNT = _reason("INVALID_AMOUNT", InvalidArgument,
                         "an amount is not whole fen within 1..10^12 (0 allowed where it means none; D11)")
UNSUPPORTED_CURRENCY = _reason("UNSUPPORTED_CURRENCY", InvalidArgument, "the currency is not CNY (D11)")
INVALID_EXPIRY = _reason("INVALID_EXPIRY", InvalidArgument, "a transfer's expires_at is not after its created_at")
INVALID_DECISION = _reason("INVALID_DECISION", InvalidArgument,
                           "a confirmation's decision is not CREDITED or DECLINED, an acceptance's not ACCEPT or "
                           "REFUSE")
INVALID_REASON = _reason("INVALID_REASON", InvalidArgument,
                         "a decline or dissolution reason is not UPPER_SNAKE_CASE of at most 64 characters")
INVALID_KIND = _reason("INVALID_KIND", InvalidArgument, "a member change's kind is not one the contract names")
MISSING_COMMITMENT = _reason("MISSING_COMMITMENT", InvalidArgument,
                             "a proposal carries no accepted commitment letter version")
INVALID_CONSENT_DEADLINE = _reason("INVALID_CONSENT_DEADLINE", InvalidArgument,
                                   "a proposal's consent_by is not in the future within 72 hours")
INVALID_ATTESTATION = _reason("INVALID_ATTESTATION", InvalidArgument,
                              "an attestation's method is not FACE or GUARDIAN_DOCUMENT, or it lacks its time or "
                              "evidence reference (D7)")
INVALID_ATTESTATION_TIME = _reason("INVALID_ATTESTATION_TIME", InvalidArgument,
                                   "an attestation is not dated between the proposal and now")
INVALID_REFERENCE = _reason("INVALID_REFERENCE", InvalidArgument,
                            "an evidence reference or letter version is not an opaque identifier "
                            "([A-Za-z0-9_.:/-], starting with a letter or digit, within its bound)")
REFERENCE_LOOKS_LIKE_ID_NUMBER = _reason("REFERENCE_LOOKS_LIKE_ID_NUMBER", InvalidArgument,
                                         "a reference holds what looks like a resident ID number (D19)")
INVALID_DIGEST = _reason("INVALID_DIGEST", InvalidArgument, "an acknowledgement's figures_sha256 is not 32 bytes")
INVALID_WINDOW_ID = _reason("INVALID_WINDOW_ID", InvalidArgument,
                            "a settlement window id is not a real YYYY-MM-DD day or YYYY-MM month")

# -- the operators' requests --------------------------------------------------------------------------------
INVALID_NAME = _reason("INVALID_NAME", InvalidArgument,
                       "a province name is empty, too long, or holds control or bidi characters")
INVALID_ENDPOINT = _reason("INVALID_ENDPOINT", InvalidArgument,
                           "an endpoint is not host:port in ASCII without spaces, within 261 characters")
INVALID_KEY_ID = _reason("INVALID_KEY_ID", InvalidArgument, "a key_id is not 1-64 characters of [A-Za-z0-9._:-]")
UNSUPPORTED_KEY_ALGORITHM = _reason("UNSUPPORTED_KEY_ALGORITHM", InvalidArgument, "a key's alg is not ed25519")
INVALID_PUBLIC_KEY = _reason("INVALID_PUBLIC_KEY", InvalidArgument, "a public key is not 32 bytes")
INVALID_KEY_VALIDITY = _reason("INVALID_KEY_VALIDITY", InvalidArgument, "a key's valid_until is not after valid_from")
INVALID_POLICY = _reason("INVALID_POLICY", InvalidArgument, "a policy value is outside its allowed range")
INVALID_STATUS = _reason("INVALID_STATUS", InvalidArgument, "a province status is not ACTIVE or SUSPENDED")
INVALID_STATE = _reason("INVALID_STATE", InvalidArgument,
                        "a state filter names no transfer, binding or settlement window state")
INVALID_WINDOW_KIND = _reason("INVALID_WINDOW_KIND", InvalidArgument,
                              "ListSettlementWindows' kind names neither the transfers' windows nor clearing months")
INVALID_PAGE_SIZE = _reason("INVALID_PAGE_SIZE", InvalidArgument,
                            "page_size is outside 0..1000 (ListTransfers, ListBindings) or 0..200 "
                            "(ListSettlementWindows)")
INVALID_PAGE_TOKEN = _reason("INVALID_PAGE_TOKEN", InvalidArgument, "page_token is not one the gateway gave out")
INVALID_ORDER = _reason("INVALID_ORDER", InvalidArgument, "ListTransfers' order names no TransferOrder value")
INVALID_CURSOR = _reason("INVALID_CURSOR", InvalidArgument,
                         "WatchTransfers' from_cursor is not one the gateway gave out")
INVALID_BANK = _reason("INVALID_BANK", InvalidArgument, "a payment's bank is not an opaque identifier")
INVALID_SERIAL_NUMBER = _reason("INVALID_SERIAL_NUMBER", InvalidArgument,
                                "a payment's serial number is not an opaque identifier")
INVALID_PAYMENT_DATE = _reason("INVALID_PAYMENT_DATE", InvalidArgument,
                               "a payment's date is not a real day, lies in the future, or predates the window's "
                               "figures")
DUPLICATE_PAYMENT = _reason("DUPLICATE_PAYMENT", InvalidArgument, "one request records two payments for one pair")
PAIR_NOT_IN_WINDOW = _reason("PAIR_NOT_IN_WINDOW", InvalidArgument,
                             "a payment names a pair of provinces the window has no figure for")
WINDOW_NOT_OF_PERIOD = _reason("WINDOW_NOT_OF_PERIOD", InvalidArgument,
                               "the window id to close is not a window of the configured period (daily or monthly)")
PROVINCE_EXISTS = _reason("PROVINCE_EXISTS", AlreadyExists, "RegisterProvince names a province already registered")
KEY_ID_TAKEN = _reason("KEY_ID_TAKEN", AlreadyExists, "a key_id to add is already registered")
PROVINCE_NOT_FOUND = _reason("PROVINCE_NOT_FOUND", NotFound, "UpdateProvince names no registered province")
KEY_NOT_FOUND = _reason("KEY_NOT_FOUND", NotFound, "a key to retire is not one of the province's keys")

# -- what is referred to ------------------------------------------------------------------------------------
TRANSFER_NOT_FOUND = _reason("TRANSFER_NOT_FOUND", NotFound,
                             "no such transfer, or one the asking province is not party to (D14)")
BINDING_NOT_FOUND = _reason("BINDING_NOT_FOUND", NotFound,
                            "no such binding, or one the asking province is not party to")
SETTLEMENT_WINDOW_NOT_FOUND = _reason("SETTLEMENT_WINDOW_NOT_FOUND", NotFound,
                                      "no such settlement window, or, to a province, a closed one it has no figures in")
NO_CLOSED_WINDOW = _reason("NO_CLOSED_WINDOW", NotFound,
                           "GetSettlement without a window id, and no closed window concerns the province yet")
TRANSFER_ID_TAKEN = _reason("TRANSFER_ID_TAKEN", AlreadyExists,
                            "the transfer id is taken by another province's transfer: use a new one")
BINDING_ID_TAKEN = _reason("BINDING_ID_TAKEN", AlreadyExists, "the binding id is taken: use a new one")
NOT_RECEIVER_PROVINCE = _reason("NOT_RECEIVER_PROVINCE", PermissionDenied,
                                "the giver's province confirms its own transfer or answers its own proposal (D14)")

# -- state and rules (stored refusals: a resend gets the same answer, replay=true) ------------------------
UNKNOWN_PROVINCE = _reason("UNKNOWN_PROVINCE", FailedPrecondition, "a province named is not in the routing table")
PROVINCE_SUSPENDED = _reason("PROVINCE_SUSPENDED", FailedPrecondition, "a province named is suspended")
BINDING_MISMATCH = _reason("BINDING_MISMATCH", FailedPrecondition,
                           "the transfer's binding is not between this giver and this receiver")
BINDING_NOT_ACTIVE = _reason("BINDING_NOT_ACTIVE", FailedPrecondition,
                             "the binding is not ACTIVE (a transfer), or can no longer be dissolved")
BINDING_NOT_PROPOSED = _reason("BINDING_NOT_PROPOSED", FailedPrecondition,
                               "the binding answered is no longer PROPOSED")
CONSENT_EXPIRED = _reason("CONSENT_EXPIRED", FailedPrecondition, "the answer to a proposal came after its consent_by")
SINGLE_RELATION_ONLY = _reason("SINGLE_RELATION_ONLY", FailedPrecondition,
                               "the person's province allows one family relation at a time and they hold one (D8)")
SETTLEMENT_SUSPENDED = _reason("SETTLEMENT_SUSPENDED", FailedPrecondition,
                               "the giver's or the receiver's networked settlement is suspended (D3)", rule="D3")
TRANSFER_ALREADY_FINAL = _reason("TRANSFER_ALREADY_FINAL", FailedPrecondition,
                                 "the transfer confirmed is already final (committed, declined, returned, rejected)")
CONFIRMATION_DEADLINE_PASSED = _reason("CONFIRMATION_DEADLINE_PASSED", FailedPrecondition,
                                       "the confirmation came after the transfer's deadline: the transfer is "
                                       "returned to the giver (D13)")
WINDOW_NOT_STARTED = _reason("WINDOW_NOT_STARTED", FailedPrecondition, "the window to close has not started yet")
WINDOW_EMPTY = _reason("WINDOW_EMPTY", FailedPrecondition,
                      "the window to close has nothing committed in it; CloseSettlementWindow with force closes it "
                      "(SETTLED at once)")
WINDOW_NOT_CLOSED = _reason("WINDOW_NOT_CLOSED", FailedPrecondition, "the window acknowledged is still open")
FIGURES_DIGEST_MISMATCH = _reason("FIGURES_DIGEST_MISMATCH", FailedPrecondition,
                                  "the acknowledged figures_sha256 is not the digest of the figures the gateway sent")
WINDOW_NOT_ACKNOWLEDGED = _reason("WINDOW_NOT_ACKNOWLEDGED", FailedPrecondition,
                                  "a payment is recorded before every province acknowledged the window (D18)")
PAYMENT_ALREADY_RECORDED = _reason("PAYMENT_ALREADY_RECORDED", FailedPrecondition,
                                   "the pair's payment is already recorded with another reference")
PROVINCE_UNAVAILABLE = _reason("PROVINCE_UNAVAILABLE", Unavailable,
                               "a province asked about its member (CheckMember) did not answer in time: retry with "
                               "the same message_id")

# -- the quota regime (Q1-Q13: domain/quota.py, usecases/quotas.py) ----------------------------------------
TRANSFERS_NOT_ALLOWED = _reason("TRANSFERS_NOT_ALLOWED", FailedPrecondition,
                                "the giver's or the receiver's province takes part in the quota regime only (Q1)")
QUOTA_NOT_ALLOWED = _reason("QUOTA_NOT_ALLOWED", FailedPrecondition,
                            "the giver's or the receiver's province does not take part in the quota regime (Q1)")
NOT_GIVER_PROVINCE = _reason("NOT_GIVER_PROVINCE", PermissionDenied,
                             "a province other than the binding's giver's sets its quota (Q2)")
NOT_BINDING_RECEIVER = _reason("NOT_BINDING_RECEIVER", FailedPrecondition,
                               "the person a consumption names is not the binding's receiver (Q12)")
CONSUMPTION_OVER_MAXIMUM = _reason("CONSUMPTION_OVER_MAXIMUM", FailedPrecondition,
                                   "a consumption asks for more than the lower of the two provinces' "
                                   "max_consumption_fen (Q11)")
DUPLICATE_SETTLEMENT_REF = _reason("DUPLICATE_SETTLEMENT_REF", FailedPrecondition,
                                   "the province's settlement reference is taken by another of its consumptions")
CONSUMPTION_NOT_FOUND = _reason("CONSUMPTION_NOT_FOUND", NotFound,
                                "no consumption of the binding with this settlement reference from this province")
QUOTA_BELOW_CONSUMED = _reason("QUOTA_BELOW_CONSUMED", FailedPrecondition,
                               "a quota would be lowered below what is already consumed (Q2)")
QUOTA_EXCEEDED = _reason("QUOTA_EXCEEDED", FailedPrecondition, "the quota cannot cover the amount drawn")
KIND_NOT_ALLOWED = _reason("KIND_NOT_ALLOWED", FailedPrecondition,
                           "a consumption is not for medical care, pharmacy or a resident or long-term-care premium")
OWN_ACCOUNT_NOT_FIRST = _reason("OWN_ACCOUNT_NOT_FIRST", FailedPrecondition,
                                "the receiver's own personal account still has a balance: it pays first (Q4)")
REVERSAL_EXCEEDS_DRAWN = _reason("REVERSAL_EXCEEDS_DRAWN", FailedPrecondition,
                                 "a reversal exceeds what was drawn and not yet reversed (Q7)")

# -- rule verdicts: computed, listed by VerifyRelation, refused on by ProposeBinding, AcceptBinding, SubmitTransfer
GIVER_NOT_INSURED = _reason("GIVER_NOT_INSURED", None,
                            "the giver is not insured, or not with normal status, in their province (D2)", rule="D2")
GIVER_NOT_EMPLOYEE = _reason("GIVER_NOT_EMPLOYEE", None, "the giver is not in employee insurance (310) (D2)",
                             rule="D2")
RECEIVER_NOT_INSURED = _reason("RECEIVER_NOT_INSURED", None,
                               "the receiver is not in employee (310) or resident (390) insurance with normal status "
                               "(D2); never told as such: the giver's province hears RECEIVER_NOT_ELIGIBLE (D19)",
                               rule="D2")
RECEIVER_NOT_ELIGIBLE = _reason("RECEIVER_NOT_ELIGIBLE", None,
                                "what the receiver's province knows rules the receiver out: not insured as D2 needs, "
                                "or settlement suspended (D3); one reason for either (D19)", rule="D2-D3")
INVALID_RELATION_CODE = _reason("INVALID_RELATION_CODE", None, "the relation code is not a GB/T 4761 code (D4)",
                                rule="D4")
INELIGIBLE_RELATION = _reason("INELIGIBLE_RELATION", None, "the relation is not an eligible family (D4)", rule="D4")
RELATION_INCONSISTENT = _reason("RELATION_INCONSISTENT", None,
                                "the relation disagrees with the birth dates or the receiver's sex in the ID numbers "
                                "(D5)", rule="D5")
FACE_REQUIRED = _reason("FACE_REQUIRED", None,
                        "a guardian attests for a receiver aged 16 or over: their own face verification is needed "
                        "(D6)", rule="D6")
TRANSFER_BLACKOUT = _reason("TRANSFER_BLACKOUT", None,
                            "the transfer is submitted in the Beijing blackout window (default 22:00-06:00) (D12)",
                            rule="D12")
DAILY_LIMIT_REACHED = _reason("DAILY_LIMIT_REACHED", None,
                              "the giver has reached the daily number of transfers on this Beijing day (D12)",
                              rule="D12")
AMOUNT_OVER_LIMIT = _reason("AMOUNT_OVER_LIMIT", None, "the amount is over the province's per-transfer maximum (D12)",
                            rule="D12")
AUTHORISED_AMOUNT_EXCEEDED = _reason("AUTHORISED_AMOUNT_EXCEEDED", None,
                                     "the transfer would take the binding past its authorised amount (D10)",
                                     rule="D10")
