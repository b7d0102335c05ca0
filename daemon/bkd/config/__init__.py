from .load import ConfigError, Problem, config_path, load_config, to_toml
from .models import Config, Host, HostSettings

__all__ = ["Config", "ConfigError", "Host", "HostSettings", "Problem", "config_path",
           "load_config", "to_toml"]
