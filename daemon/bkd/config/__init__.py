from .load import ConfigError, Problem, check_config, config_path, load_config, to_dict, to_toml
from .models import (
    HOST_NAME,
    RESTART_ONLY,
    Config,
    Host,
    HostName,
    HostSettings,
    describe_changes,
    format_duration,
    parse_duration,
    redact_url,
    valid_host_name,
)

__all__ = ["HOST_NAME", "RESTART_ONLY", "Config", "ConfigError", "Host", "HostName", "HostSettings",
           "Problem", "check_config", "config_path", "describe_changes", "format_duration",
           "load_config", "parse_duration", "redact_url", "to_dict", "to_toml", "valid_host_name"]
