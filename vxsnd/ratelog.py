"""Rate-limited logging lives in vxflood.ratelog (both daemons use it); this name stays
for the modules that import it from here."""

from vxflood.ratelog import RateLimitedLog

__all__ = ["RateLimitedLog"]
