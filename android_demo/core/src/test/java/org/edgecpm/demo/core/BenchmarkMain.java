package org.edgecpm.demo.core;

import java.io.File;
import java.io.FileOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;
import org.json.JSONArray;
import org.json.JSONObject;

/**
 * The app's benchmark writer driven off the phone, for tests/test_android_contract.py: {@link Benchmark#run}
 * on a bundle with an engine that replays recorded runner output ({@code [{"pieces": [...], "stats": "{...}"}]}
 * per prompt), writing the JSON that `edgecpm profile --import` reads.
 * Usage: {@code BenchmarkMain BUNDLE_DIR REPLAY_JSON PROFILE OUT_JSON}.
 */
public final class BenchmarkMain {
    private BenchmarkMain() {
    }

    public static void main(String[] args) throws Exception {
        BundleManifest m = BundleManifest.read(new File(args[0]));
        final JSONArray replay = new JSONArray(new String(BundleManifest.readAll(new File(args[1])),
                StandardCharsets.UTF_8));
        Engine engine = new Engine() {
            private int call;

            @Override
            public void load() {
            }

            @Override
            public void generate(String prompt, int newTokens, float temperature, int numBos, Listener listener) {
                JSONObject r = replay.optJSONObject(call++);
                JSONArray pieces = r.optJSONArray("pieces");
                for (int i = 0; i < pieces.length() && i < newTokens; i++) {
                    listener.onPiece(pieces.optString(i));
                }
                listener.onStats(r.optString("stats"));
            }

            @Override
            public void stop() {
            }

            @Override
            public void resetContext() {
            }
        };
        String profile = args[2];
        Settings s = Settings.forBenchmark(m, DeviceInfo.fromProfile(m.phoneProfiles.get(profile)));
        Map<String, String> phone = new HashMap<String, String>();
        phone.put("manufacturer", "replay");
        phone.put("model", "host JVM");
        JSONObject out = Benchmark.run(m, engine, s, profile, phone, 850.0, new Benchmark.MemorySource() {
            @Override
            public MemoryStats read() {
                return MemoryStats.parseProcStatus("VmRSS:\t 300000 kB\nVmHWM:\t 350000 kB\n");
            }
        }, null);
        FileOutputStream f = new FileOutputStream(args[3]);
        try {
            f.write(out.toString(1).getBytes(StandardCharsets.UTF_8));
        } finally {
            f.close();
        }
    }
}
