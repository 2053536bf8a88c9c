package org.edgecpm.demo.core;

import java.text.SimpleDateFormat;
import java.util.Date;
import java.util.Locale;
import java.util.Map;
import java.util.TimeZone;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * The phone side of `edgecpm profile --import`: the profiler's fixed prompts (shipped in the bundle), one
 * greedy generate each from a fresh context, timed by the runner's own stats; the JSON the SDK merges.
 */
public final class Benchmark {
    public static final String SCHEMA = "edgecpm.phone-benchmark/1";

    /** Where the memory numbers come from (/proc/self/status on the phone). */
    public interface MemorySource {
        MemoryStats read();
    }

    /** Progress for the benchmark screen. */
    public interface Progress {
        void onRun(int index, int total, JSONObject run);
    }

    private Benchmark() {
    }

    /**
     * Runs every benchmark prompt. `deviceProfile` is the SDK profile name the numbers belong to (may be
     * null: then `edgecpm profile --import` needs --device); `phone` describes the handset (Build fields).
     */
    public static JSONObject run(BundleManifest m, Engine engine, Settings settings, String deviceProfile,
                                 Map<String, String> phone, double loadMs, MemorySource memory, Progress progress)
            throws BundleException {
        try {
            JSONArray runs = new JSONArray();
            int total = m.benchmarkPrompts.size();
            for (int i = 0; i < total; i++) {
                BundleManifest.BenchmarkPrompt p = m.benchmarkPrompts.get(i);
                final TextStream stream = new TextStream(settings.stopTexts);
                final String[] stats = new String[1];
                if (p.context + m.benchmarkDecodeTokens + settings.numBos >= settings.contextTokens) {
                    throw new BundleException("benchmark context " + p.context + " does not fit the "
                            + settings.contextTokens + "-token context chosen for " + settings.device);
                }
                engine.resetContext();
                engine.generate(p.text, m.benchmarkDecodeTokens, settings.temperature, settings.numBos,
                        new Engine.Listener() {
                            @Override
                            public void onPiece(String piece) {
                                stream.push(piece);
                            }

                            @Override
                            public void onStats(String json) {
                                stats[0] = json;
                            }
                        });
                stream.finish();
                if (stats[0] == null) {
                    throw new BundleException("the engine reported no stats for benchmark prompt " + p.context);
                }
                GenerationStats g = GenerationStats.fromRunnerJson(stats[0]);
                JSONObject run = new JSONObject();
                run.put("context", p.context);
                run.put("new_tokens", m.benchmarkDecodeTokens);
                run.put("prompt_tokens", g.promptTokens);
                run.put("generated_tokens", g.generatedTokens);
                run.put("prefill_ms", g.prefillMs);
                run.put("decode_ms", g.decodeMs);
                run.put("ttft_ms", g.ttftMs);
                run.put("prefill_tokens_per_s", finite(g.prefillTokensPerSecond()));
                run.put("decode_tokens_per_s", finite(g.decodeTokensPerSecond()));
                run.put("runner_stats", new JSONObject(stats[0]));
                run.put("text", stream.text());
                runs.put(run);
                if (progress != null) {
                    progress.onRun(i, total, run);
                }
            }
            MemoryStats mem = memory.read();
            JSONObject out = new JSONObject();
            out.put("schema", SCHEMA);
            out.put("created", now());
            out.put("device_profile", deviceProfile == null ? JSONObject.NULL : deviceProfile);
            out.put("phone", new JSONObject(phone));
            JSONObject bundle = new JSONObject();
            bundle.put("model_name", m.modelName);
            bundle.put("quant", m.quant);
            bundle.put("model_sha256", m.modelSha256);
            bundle.put("executorch_version", m.executorchVersion);
            bundle.put("max_context_len", m.maxContextLen);
            out.put("bundle", bundle);
            JSONObject s = new JSONObject();
            s.put("temperature", (double) settings.temperature);
            s.put("num_bos", settings.numBos);
            s.put("decode_tokens", m.benchmarkDecodeTokens);
            s.put("text", m.benchmarkSource);
            s.put("threads", settings.threads);
            out.put("settings", s);
            out.put("load_ms", loadMs);
            JSONObject mj = new JSONObject();
            mj.put("rss_bytes", mem.rssBytes);
            mj.put("peak_rss_bytes", mem.peakRssBytes);
            out.put("memory", mj);
            out.put("runs", runs);
            return out;
        } catch (JSONException e) {
            throw new IllegalStateException(e);
        }
    }

    private static Object finite(double v) {
        return Double.isNaN(v) || Double.isInfinite(v) ? JSONObject.NULL : (Object) v;
    }

    private static String now() {
        SimpleDateFormat f = new SimpleDateFormat("yyyy-MM-dd'T'HH:mm:ss'Z'", Locale.ROOT);
        f.setTimeZone(TimeZone.getTimeZone("UTC"));
        return f.format(new Date());
    }
}
