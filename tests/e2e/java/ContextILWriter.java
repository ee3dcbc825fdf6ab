/*
 * A producer that writes events as L&B's Java ContextIL does (the logger of
 * CREAM), for lbtwist's end-to-end tests of the spool intake
 * (tests/e2e/test_spool_java.py). Our own program: it follows the observed
 * behaviour of org.glite.lb.ContextIL, it shares no code with it.
 *
 * Input (stdin): one event per line, tab-separated:
 *   jobid  event  source  seqcode  user  millis  name=value ...
 * where event is one of the CREAM types below and the name=value pairs are
 * the event's own fields (catalogue names, any case); fields not given are
 * written empty, as the Java producer writes every field of its event.
 *
 * Per event, as ContextIL: the line is DG.LLLID="0" + the common fields (DATE
 * in the 20-digit UTC form yyyyMMddHHmmssSSS + "000") + two spaces + the
 * event's fields + LF; it is appended to <prefix>.<unique part of the job id>
 * under FileChannel.tryLock() (up to 5 immediate attempts; then nothing is
 * written and a give-up is counted); with --socket, a fresh UNIX connection
 * gets the offset the line was written at (8 bytes, little-endian) and the
 * line, and is closed; poke errors are counted and otherwise ignored.
 *
 * Output (stdout, last line): written=N gaveup=N pokefail=N
 *
 * Usage: java -cp DIR org.glite.lb.ContextILWriter --prefix PREFIX
 *            [--socket PATH [--jni-length]] [--host HOST] [--repeat N] < events
 *
 * --jni-length: poke as ContextIL's JNI side does, message.length() bytes of
 * the line (so a line with non-ASCII characters is sent cut short, its LF lost).
 */
package org.glite.lb;

import java.io.BufferedReader;
import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.channels.SocketChannel;
import java.net.StandardProtocolFamily;
import java.text.SimpleDateFormat;
import java.util.ArrayList;
import java.util.Date;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.SimpleTimeZone;

/** A time value with no toString of its own, as the Java producer's. */
class Timeval {
    final long sec;
    final long usec;

    Timeval(long sec, long usec) {
        this.sec = sec;
        this.usec = usec;
    }
}

public class ContextILWriter {
    /** The fields of each event type, in catalogue order; "enum" ones are upper-cased. */
    static final Map<String, String[]> FIELDS = new LinkedHashMap<>();
    static final java.util.Set<String> ENUMS = java.util.Set.of(
        "REGJOB.JOBTYPE", "CREAMSTORE.COMMAND", "CREAMSTORE.RESULT", "CREAMCALL.COMMAND",
        "CREAMCALL.RESULT", "CREAMSTATUS.RESULT", "CREAMSTATUS.OLD_STATE",
        "CREAMSTATUS.NEW_STATE");

    static {
        FIELDS.put("RegJob", new String[] {"JDL", "NS", "PARENT", "JOBTYPE", "NSUBJOBS", "SEED",
            "WMS_DN"});
        FIELDS.put("CREAMAccepted", new String[] {"LOCAL_JOBID"});
        FIELDS.put("CREAMStore", new String[] {"COMMAND", "CMDID", "RESULT", "REASON"});
        FIELDS.put("CREAMCall", new String[] {"CALLEE", "COMMAND", "CMDID", "DESTID", "RESULT",
            "REASON"});
        FIELDS.put("CREAMStatus", new String[] {"OLD_STATE", "NEW_STATE", "ORIG_TIMESTAMP",
            "RESULT", "DESCR", "EXIT_CODE", "FAILURE_REASON", "WORKER_NODE", "LRMS_JOBID"});
    }

    static final int LOCK_ATTEMPTS = 5;

    String prefix;
    String socket;
    String host = "localhost";
    boolean jniLength;
    int written;
    int gaveUp;
    int pokeFailed;

    /** ContextIL's escaping: quotes get a backslash (backslashes do not). */
    static String escape(String in) {
        return in.replace("\"", "\\\"");
    }

    static String date(long millis) {
        SimpleDateFormat df = new SimpleDateFormat("yyyyMMddHHmmssSSS", Locale.ROOT);
        df.setTimeZone(new SimpleTimeZone(0, "UTC"));
        return df.format(new Date(millis)) + "000";
    }

    String format(String[] cols) {
        String jobid = cols[0], event = cols[1], source = cols[2], seqcode = cols[3];
        String user = cols[4];
        long millis = Long.parseLong(cols[5]);
        Map<String, String> given = new LinkedHashMap<>();
        for (int i = 6; i < cols.length; i++) {
            int eq = cols[i].indexOf('=');
            given.put(cols[i].substring(0, eq).toUpperCase(Locale.ROOT), cols[i].substring(eq + 1));
        }
        String[] names = FIELDS.get(event);
        if (names == null) {
            throw new IllegalArgumentException("no such event type: " + event);
        }
        StringBuilder sb = new StringBuilder("DG.LLLID=\"0\"");
        sb.append(" DG.USER=\"").append(escape(user)).append('"');
        sb.append(" DATE=").append(date(millis));
        sb.append(" HOST=\"").append(escape(host)).append('"');
        sb.append(" PROG=edg-wms LVL=SYSTEM DG.PRIORITY=0");
        sb.append(" DG.SOURCE=\"").append(source).append('"');
        sb.append(" DG.SRC_INSTANCE=\"\"");
        sb.append(" DG.EVNT=\"").append(event).append('"');
        sb.append(" DG.JOBID=\"").append(jobid).append('"');
        sb.append(" DG.SEQCODE=\"").append(escape(seqcode)).append('"');
        sb.append(' ');
        String upper = event.toUpperCase(Locale.ROOT);
        for (String name : names) {
            String key = upper + "." + name;
            Object value = given.getOrDefault(name, key.equals("REGJOB.NSUBJOBS") ? "0" : "");
            if (key.equals("CREAMSTATUS.ORIG_TIMESTAMP")) {
                // The Java producer writes the object itself (no toString of its own).
                value = new Timeval(millis / 1000, (millis % 1000) * 1000);
            } else if (key.equals("REGJOB.PARENT") && "".equals(value)) {
                value = null; // String.valueOf(null parent) is "null", as CREAM's RegJob has.
            } else if (ENUMS.contains(key)) {
                value = ((String) value).toUpperCase(Locale.ROOT);
            }
            sb.append(" DG.").append(key).append("=\"").append(escape(String.valueOf(value)))
                .append('"');
        }
        return sb.append('\n').toString();
    }

    /** Append under tryLock; the offset written at, or -1 (gave up). */
    long append(String file, byte[] data) throws IOException {
        for (int i = 0; i < LOCK_ATTEMPTS; i++) {
            try (FileOutputStream out = new FileOutputStream(new File(file), true)) {
                FileChannel channel = out.getChannel();
                FileLock lock = channel.tryLock();
                if (lock == null) {
                    continue;
                }
                try {
                    long offset = channel.size();
                    out.write(data);
                    return offset;
                } finally {
                    lock.release();
                }
            }
        }
        gaveUp++;
        return -1;
    }

    void poke(long offset, byte[] data) {
        ByteBuffer buf = ByteBuffer.allocate(8 + data.length).order(ByteOrder.LITTLE_ENDIAN);
        buf.putLong(offset).put(data).flip();
        try (SocketChannel ch = SocketChannel.open(StandardProtocolFamily.UNIX)) {
            ch.connect(UnixDomainSocketAddress.of(socket));
            while (buf.hasRemaining()) {
                ch.write(buf);
            }
        } catch (IOException e) {
            pokeFailed++;
        }
    }

    void log(String[] cols) throws IOException {
        String line = format(cols);
        String jobid = cols[0];
        String file = prefix + "." + jobid.substring(jobid.lastIndexOf('/') + 1);
        byte[] data = line.getBytes(); // the platform charset, as ContextIL
        long offset = append(file, data);
        if (offset < 0) {
            return;
        }
        written++;
        if (socket != null) {
            byte[] poke = data;
            if (jniLength) {
                // ContextIL's native poke sends message.length() bytes (UTF-16 units)
                // of the line's UTF-8 form: a line with non-ASCII text is cut short.
                byte[] utf8 = line.getBytes(java.nio.charset.StandardCharsets.UTF_8);
                poke = java.util.Arrays.copyOf(utf8, Math.min(utf8.length, line.length()));
            }
            poke(offset, poke);
        }
    }

    public static void main(String[] args) throws IOException {
        ContextILWriter w = new ContextILWriter();
        int repeat = 1;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--prefix" -> w.prefix = args[++i];
                case "--socket" -> w.socket = args[++i];
                case "--host" -> w.host = args[++i];
                case "--repeat" -> repeat = Integer.parseInt(args[++i]);
                case "--jni-length" -> w.jniLength = true;
                default -> throw new IllegalArgumentException("unknown argument " + args[i]);
            }
        }
        if (w.prefix == null) {
            throw new IllegalArgumentException("--prefix is required");
        }
        List<String[]> events = new ArrayList<>();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, "UTF-8"));
        for (String line; (line = in.readLine()) != null; ) {
            if (!line.isEmpty()) {
                events.add(line.split("\t", -1));
            }
        }
        // --repeat N: the events again with the seqcode made distinct (load for the
        // concurrency test without one JVM per batch).
        for (int r = 0; r < repeat; r++) {
            for (String[] cols : events) {
                String[] copy = cols.clone();
                if (repeat > 1) {
                    copy[3] = cols[3] + "_r" + r;
                }
                w.log(copy);
            }
        }
        System.out.println("written=" + w.written + " gaveup=" + w.gaveUp + " pokefail="
            + w.pokeFailed);
    }
}
