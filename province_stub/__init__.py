"""A runnable stand-in for one provincial medical-insurance platform (never imports `gateway`)."""

from province_stub.server import RunningStub, StubConfig, start_stub
from province_stub.state import Behaviour, ConfirmMode, ConsentMode

__all__ = ["Behaviour", "ConfirmMode", "ConsentMode", "RunningStub", "StubConfig", "start_stub"]
