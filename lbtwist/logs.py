# -*- test-case-name: tests.unit.test_logs -*-
"""
The old name of the capped twistd log factory, kept so that
C{twistd --logger lbtwist.logs.logger} keeps working; the code lives in  (relayout: keep)
the service layer's C{logs} module.
"""

from lbtwist.service.logs import logger  # relayout: keep

__all__ = ["logger"]
