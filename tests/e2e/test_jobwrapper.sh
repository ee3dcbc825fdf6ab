#!/bin/bash
# The Job Wrapper's L&B idiom, as the gLite Job Wrapper writes it: log an
# event, take the new sequence code from logevent's output, keep the old one
# when logging fails. Used by tests/e2e/test_proxy.py (JobWrapperTests).
#
# Environment: LBTWIST (the command), GLITE_WMS_JOBID, GLITE_WMS_SEQUENCE_CODE,
# GLITE_WMS_LBPROXY_STORE_SOCK. Prints the sequence code after each event.
set -u

GLITE_WMS_SEQUENCE_CODE=$($LBTWIST logevent -x -j "$GLITE_WMS_JOBID" -s LRMS -e Running --node=wn1 2>/dev/null || echo $GLITE_WMS_SEQUENCE_CODE)
export GLITE_WMS_SEQUENCE_CODE
echo "$GLITE_WMS_SEQUENCE_CODE"

# The next event continues from the code above (taken from the environment).
GLITE_WMS_SEQUENCE_CODE=$($LBTWIST logevent -x -s LRMS -e ReallyRunning 2>/dev/null || echo $GLITE_WMS_SEQUENCE_CODE)
export GLITE_WMS_SEQUENCE_CODE
echo "$GLITE_WMS_SEQUENCE_CODE"
