"""What vxsnd and vxrd both need, written once: the daemon lifecycle, logging,
readiness notification, key reload, rate-limited logs, host:port parsing and
the ctl tools' formatting. vxsnd and vxrd import this package (and schema);
this package imports neither of them.
"""
