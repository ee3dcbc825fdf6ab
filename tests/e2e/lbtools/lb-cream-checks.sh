#!/bin/bash
# State checks in the manner of L&B's LB/tests/lb-test-cream.sh and
# lb-test-job-states.sh (glite-testsuites), written for lbtwist: the glite-lb-* names on PATH are thin wrappers around lbtwist
# subcommands. Prints "ok <what>" or "FAIL <what>: <detail>" per check; exit 1 if any
# check failed.
#
# Usage: lb-cream-checks.sh direct|wms|wms-cream|job-states SERVER
#   direct      a job submitted to CREAM directly
#   wms         a WMS job up to CREAMAccepted, then its gLite events (Done, Clear)
#   wms-cream   a WMS job's CREAM events (CREAMStore, suspension): L&B bug #45971 checks
#   job-states  a gLite job through every state, grep "state :" as lb-test-job-states.sh

part=$1
server=$2
failed=0

field () {  # field JOBID NAME: the value of "NAME :" in glite-lb-job_status
	glite-lb-job_status "$1" | grep -w "$2 :" | awk '{ print $3 }'
}

check_state () {  # check_state JOBID WMS_STATE [CREAM_STATE]
	local s c
	s=$(field "$1" state)
	c=$(field "$1" cream_state)
	if [ "$s" = "$2" ] && [ "$c" = "$3" ]; then
		echo "ok state $2 $3"
	else
		echo "FAIL state: $s $c (want $2 $3)"
		failed=1
	fi
}

check_value () {  # check_value JOBID NAME VALUE
	local v
	v=$(field "$1" "$2")
	if [ "$v" = "$3" ]; then
		echo "ok $2 $3"
	else
		echo "FAIL $2: '$v' (want '$3')"
		failed=1
	fi
}

log () {  # log ARGS...: glite-lb-logevent, its output the next sequence code
	local out
	out=$(glite-lb-logevent -j "$jobid" -c "$seq" "$@")
	if [ $? -ne 0 ] || [ -z "$out" ]; then
		echo "FAIL logevent $*: no sequence code"
		failed=1
	else
		seq=$out
	fi
}

cream_status () {  # cream_status OLD NEW: CREAM's two events of one state change
	log -s CREAMExecutor -e CREAMStatus --old_state="$1" --new_state="$2" --result=Arrived
	log -s CREAMExecutor -e CREAMStatus --old_state="$1" --new_state="$2" --result=Done
}

wms_job () {  # register a WMS job and log its events up to CREAMAccepted
	local out
	out=$(glite-lb-job_reg -m "$server" -s application)
	jobid=$(echo "$out" | grep "new jobid" | awk '{ print $3 }')
	if [ -z "$jobid" ]; then
		echo "FAIL job_reg: no 'new jobid' line in: $out"
		exit 1
	fi
	echo "ok registered $jobid"
	check_state "$jobid" Submitted
	seq="UI=000003:NS=0000000000:WM=000000:BH=0000000000:JSS=000000:LM=000000:LRMS=000000:APP=000000:LBS=000000"
	log -s NetworkServer -e Accepted --from=UserInterface --from_host="sending host" \
		--from_instance="sending instance" --local_jobid="new local id"
	log -s WorkloadManager -e DeQueued --queue="queue name" --local_jobid="local id"
	log -s WorkloadManager -e HelperCall --helper_name="helper" --helper_params="params" --src_role=CALLING
	log -s WorkloadManager -e Match --dest_id="ce.example.org:8443/cream-pbs-long"
	log -s WorkloadManager -e HelperReturn --helper_name="helper" --retval="data" --src_role=CALLING
	check_state "$jobid" Waiting
	log -s CREAMExecutor -e CREAMAccepted --from=CREAMExecutor --from_host="sending host" \
		--from_instance="sending instance" --local_jobid=CREAM_FAKE_JOBID
	check_state "$jobid" Waiting
}

case "$part" in
direct)
	local_jobid="CREAM-test-$$"
	jobid="https://$server/$local_jobid"
	glite-lb-job_reg -j "$jobid" -m "$server" -s CREAMExecutor -c > /dev/null || { echo "FAIL job_reg"; exit 1; }
	echo "ok registered $jobid"
	check_state "$jobid" Submitted Registered
	seq="no_seqcodes_with_CREAM"
	log -s CREAMExecutor -e CREAMAccepted --from=CREAMExecutor --from_host="sending host" \
		--from_instance="sending instance" --local_jobid="$local_jobid"
	check_state "$jobid" Submitted Registered
	cream_status Registered Pending; check_state "$jobid" Waiting Pending
	cream_status Pending Idle; check_state "$jobid" Scheduled Idle
	cream_status Idle Running; check_state "$jobid" Running Running
	cream_status Running Really-running; check_state "$jobid" Running Really-running
	cream_status Really-running Done-ok; check_state "$jobid" Done Done-ok
	check_value "$jobid" exit_code 0
	;;
wms)
	wms_job
	log -s WorkloadManager -e EnQueued --queue="destination queue" --job="job description" \
		--result=OK --reason="transfer"
	check_state "$jobid" Ready
	log -s JobController -e DeQueued --queue="queue name" --local_jobid="local id"
	check_state "$jobid" Ready
	log -s LogMonitor -e Done --status_code=OK --reason="reason for the change" --exit_code=0
	check_state "$jobid" Done
	check_value "$jobid" exit_code 0
	log -s LogMonitor -e Clear --reason=USER
	check_state "$jobid" Cleared
	;;
wms-cream)
	wms_job
	log -s CREAMInterface -e CREAMStore --command=CmdStart --result=Start
	log -s CREAMInterface -e CREAMStore --command=CmdStart --result=Ok
	check_state "$jobid" Waiting Pending
	cream_status Registered Pending; check_state "$jobid" Waiting Pending
	log -s WorkloadManager -e EnQueued --queue="destination queue" --job="job description" \
		--result=OK --reason="transfer"
	check_state "$jobid" Ready Pending
	cream_status Pending Idle; check_state "$jobid" Scheduled Idle
	cream_status Idle Running; check_state "$jobid" Running Running
	log -s CREAMInterface -e CREAMStore --command=CmdSuspend --result=Start
	log -s CREAMInterface -e CREAMStore --command=CmdSuspend --result=Ok
	check_state "$jobid" Running Running
	check_value "$jobid" suspended 1
	cream_status Running Idle; check_state "$jobid" Scheduled Idle
	check_value "$jobid" suspended 0
	cream_status Idle Running; check_state "$jobid" Running Running
	cream_status Running Really-running; check_state "$jobid" Running Really-running
	cream_status Really-running Done-ok; check_state "$jobid" Done Done-ok
	;;
job-states)
	jobid=$(glite-lb-job_reg -m "$server" -s application | grep "new jobid" | awk '{ print $3 }')
	[ -n "$jobid" ] || { echo "FAIL job_reg: no new jobid"; exit 1; }
	echo "ok registered $jobid"
	state_is () {  # the script's own grep: "state :" without -w
		local s
		s=$(glite-lb-job_status "$jobid" | grep "state :" | awk '{print $3}')
		if [ "$s" = "$1" ]; then echo "ok state $1"; else echo "FAIL state: '$s' (want $1)"; failed=1; fi
	}
	state_is Submitted
	seq="UI=000003:NS=0000000000:WM=000000:BH=0000000000:JSS=000000:LM=000000:LRMS=000000:APP=000000:LBS=000000"
	log -s NetworkServer -e Accepted --from=UserInterface --from_host="sending host" \
		--from_instance="sending instance" --local_jobid="new local id"; state_is Waiting
	log -s NetworkServer -e EnQueued --queue="destination queue" --job="job description" \
		--result=OK --reason="transfer"; state_is Waiting
	log -s WorkloadManager -e DeQueued --queue="queue name" --local_jobid="local id"; state_is Waiting
	log -s WorkloadManager -e HelperCall --helper_name="helper" --helper_params="params" \
		--src_role=CALLING; state_is Waiting
	log -s WorkloadManager -e Match --dest_id="ce.example.org:2119/jobmanager-pbs-long"; state_is Waiting
	log -s WorkloadManager -e HelperReturn --helper_name="helper" --retval="data" \
		--src_role=CALLING; state_is Waiting
	log -s WorkloadManager -e EnQueued --queue="destination queue" --job="job description" \
		--result=OK --reason="transfer"; state_is Ready
	log -s JobController -e DeQueued --queue="queue name" --local_jobid="local id"; state_is Ready
	log -s JobController -e Transfer --destination=LRMS --dest_host="destination host" \
		--dest_instance="destination instance" --job="job description" --result=OK \
		--reason="transfer" --dest_jobid="destination id"; state_is Ready
	log -s LogMonitor -e Accepted --from=JobController --from_host="sending host" \
		--from_instance="sending instance" --local_jobid="new local id"; state_is Ready
	log -s LogMonitor -e Transfer --destination=LRMS --dest_host="destination host" \
		--dest_instance="destination instance" --job="job description" --result=OK \
		--reason="transfer" --dest_jobid="destination id"; state_is Scheduled
	log -s LogMonitor -e Running --node="worker node"; state_is Running
	log -s LogMonitor -e Done --status_code=OK --reason="reason for the change" --exit_code=0
	state_is Done
	log -s LogMonitor -e Clear --reason=USER; state_is Cleared
	;;
*)
	echo "usage: $0 direct|wms|wms-cream|job-states SERVER" >&2
	exit 2
	;;
esac
exit $failed
