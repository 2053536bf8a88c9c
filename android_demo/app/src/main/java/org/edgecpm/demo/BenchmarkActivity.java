package org.edgecpm.demo;

import android.app.Activity;
import android.os.Build;
import android.os.Bundle;
import android.view.View;
import android.widget.ArrayAdapter;
import android.widget.Button;
import android.widget.LinearLayout;
import android.widget.ScrollView;
import android.widget.Spinner;
import android.widget.TextView;
import java.io.File;
import java.io.FileOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.edgecpm.demo.core.Benchmark;
import org.edgecpm.demo.core.BundleException;
import org.edgecpm.demo.core.BundleManifest;
import org.edgecpm.demo.core.DeviceInfo;
import org.edgecpm.demo.core.MemoryStats;
import org.edgecpm.demo.core.Settings;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * Runs the profiler's fixed prompts and writes the JSON that {@code edgecpm profile --import} merges into the
 * chosen device profile's report ({@code adb pull} the path shown).
 */
public class BenchmarkActivity extends Activity {
    private static final String LIVE = "(this phone, no profile: pass --device on import)";
    private TextView log;
    private Spinner profile;
    private Button run;

    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        LinearLayout root = new LinearLayout(this);
        root.setOrientation(LinearLayout.VERTICAL);
        root.setPadding(16, 16, 16, 16);
        TextView about = new TextView(this);
        about.setText("Prompts: " + Loaded.manifest.benchmarkSource + "; contexts "
                + contexts(Loaded.manifest) + ", " + Loaded.manifest.benchmarkDecodeTokens + " greedy tokens each.");
        root.addView(about);
        profile = new Spinner(this);
        List<String> names = new ArrayList<String>(Loaded.manifest.phoneProfiles.keySet());
        names.add(LIVE);
        profile.setAdapter(new ArrayAdapter<String>(this, android.R.layout.simple_spinner_dropdown_item, names));
        root.addView(profile);
        run = new Button(this);
        run.setText("Run benchmark");
        root.addView(run);
        ScrollView scroll = new ScrollView(this);
        log = new TextView(this);
        log.setTextIsSelectable(true);
        scroll.addView(log);
        root.addView(scroll, new LinearLayout.LayoutParams(LinearLayout.LayoutParams.MATCH_PARENT, 0, 1f));
        setContentView(root);
        run.setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                start((String) profile.getSelectedItem());
            }
        });
    }

    private static String contexts(BundleManifest m) {
        StringBuilder sb = new StringBuilder();
        for (BundleManifest.BenchmarkPrompt p : m.benchmarkPrompts) {
            sb.append(sb.length() == 0 ? "" : ", ").append(p.context);
        }
        return sb.toString();
    }

    private void say(final String line) {
        runOnUiThread(new Runnable() {
            @Override
            public void run() {
                log.append(line + "\n");
            }
        });
    }

    private void start(final String choice) {
        run.setEnabled(false);
        new Thread(new Runnable() {
            @Override
            public void run() {
                try {
                    BundleManifest m = Loaded.manifest;
                    boolean live = LIVE.equals(choice);
                    DeviceInfo device = live ? Loaded.liveDevice(BenchmarkActivity.this)
                            : DeviceInfo.fromProfile(m.phoneProfiles.get(choice));
                    Settings settings = Settings.forBenchmark(m, device);
                    Map<String, String> phone = new HashMap<String, String>();
                    phone.put("manufacturer", Build.MANUFACTURER);
                    phone.put("model", Build.MODEL);
                    phone.put("hardware", Build.HARDWARE);
                    phone.put("abi", Build.SUPPORTED_ABIS[0]);
                    phone.put("sdk_int", String.valueOf(Build.VERSION.SDK_INT));
                    phone.put("cores", String.valueOf(Runtime.getRuntime().availableProcessors()));
                    phone.put("bos_supported", String.valueOf(Loaded.engine.supportsBos()));
                    JSONObject out = Benchmark.run(m, Loaded.engine, settings, live ? null : choice, phone,
                            Loaded.loadMs, new Benchmark.MemorySource() {
                                @Override
                                public MemoryStats read() {
                                    return Loaded.memory();
                                }
                            }, new Benchmark.Progress() {
                                @Override
                                public void onRun(int index, int total, JSONObject r) {
                                    say(String.format(java.util.Locale.ROOT,
                                            "context %d: prefill %.1f tok/s, decode %.2f tok/s, TTFT %.0f ms",
                                            r.optInt("context"), r.optDouble("prefill_tokens_per_s"),
                                            r.optDouble("decode_tokens_per_s"), r.optDouble("ttft_ms")));
                                }
                            });
                    File dir = getExternalFilesDir(null);
                    File file = new File(dir, "benchmark-" + (live ? "phone" : choice) + "-"
                            + System.currentTimeMillis() + ".json");
                    FileOutputStream f = new FileOutputStream(file);
                    try {
                        f.write(out.toString(1).getBytes(StandardCharsets.UTF_8));
                    } finally {
                        f.close();
                    }
                    say(Loaded.memory().summary());
                    say("Wrote " + file + "\nOn the computer: adb pull " + file + " && edgecpm profile --import "
                            + file.getName() + (live ? " --device PROFILE" : "") + " --out report-" 
                            + (live ? "phone" : choice));
                } catch (BundleException | JSONException | java.io.IOException e) {
                    say("failed: " + e.getMessage());
                }
                runOnUiThread(new Runnable() {
                    @Override
                    public void run() {
                        run.setEnabled(true);
                    }
                });
            }
        }).start();
    }
}
