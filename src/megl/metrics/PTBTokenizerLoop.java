// One long-lived JVM running Stanford's PTBTokenizer.main once per request, as pycocoevalcap's
// PTBTokenizer runs it once per JVM: `PTBTokenizer -preserveLines -lowerCase FILE`, unchanged.
// Hand-written: the 3.4.1 jar has no server mode, and its main buffers stdin's output to the end.
// Protocol (stdin/stdout): one line per request, the absolute path of a UTF-8 file; the answer is
// "OK <n>\n" then the n bytes main wrote to System.out, or "ERR <message>\n".
// Started by megl.metrics.meteor_server as: java -cp stanford-corenlp-3.4.1.jar PTBTokenizerLoop.java
import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;

public class PTBTokenizerLoop {
    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        PrintStream out = System.out;
        String path;
        while ((path = in.readLine()) != null) {
            ByteArrayOutputStream buf = new ByteArrayOutputStream();
            String error = null;
            System.setOut(new PrintStream(buf, true));  // main wraps System.out in its own UTF-8 writer: bytes pass through
            try {
                edu.stanford.nlp.process.PTBTokenizer.main(new String[] {"-preserveLines", "-lowerCase", path});
            } catch (Throwable t) {
                error = (t.getClass().getName() + ": " + t.getMessage()).replace('\n', ' ');
            } finally {
                System.setOut(out);
            }
            byte[] bytes = buf.toByteArray();
            OutputStream raw = out;
            if (error != null) {
                raw.write(("ERR " + error + "\n").getBytes(StandardCharsets.UTF_8));
            } else {
                raw.write(("OK " + bytes.length + "\n").getBytes(StandardCharsets.US_ASCII));
                raw.write(bytes);
            }
            raw.flush();
        }
    }
}
