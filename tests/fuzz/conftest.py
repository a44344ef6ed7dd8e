"""The fuzzer's calls are API calls: D19 (no clear ID number or name in any log line) is checked for them too."""

from tests.api.conftest import no_clear_personal_data_in_logs

__all__ = ["no_clear_personal_data_in_logs"]
