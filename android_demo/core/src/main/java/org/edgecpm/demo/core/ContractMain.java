package org.edgecpm.demo.core;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.json.JSONArray;
import org.json.JSONObject;

/**
 * What `:core` understands of a bundle, as JSON on stdout: the contract tests compare it with what the Python
 * SDK wrote and renders (`java ... ContractMain BUNDLE_DIR CONVERSATIONS_JSON`). Exit 2 with one line on
 * stderr when the bundle is refused.
 */
public final class ContractMain {
    private ContractMain() {
    }

    public static void main(String[] args) throws Exception {
        BundleManifest m;
        try {
            m = BundleManifest.read(new File(args[0]));
            m.verifyFiles(true);
        } catch (BundleException e) {
            System.err.println("core: error: " + e.getMessage());
            System.exit(2);
            return;
        }
        JSONArray convs = new JSONArray(new String(BundleManifest.readAll(new File(args[1])), StandardCharsets.UTF_8));
        JSONObject out = new JSONObject();
        out.put("schema", BundleManifest.SCHEMA);
        out.put("model_file", m.modelFile);
        out.put("tokenizer_file", m.tokenizerFile);
        out.put("model_bytes", m.modelBytes);
        out.put("max_seq_len", m.maxSeqLen);
        out.put("max_context_len", m.maxContextLen);
        out.put("bos_id", m.bosId);
        out.put("eos_ids", new JSONArray(m.eosIds));
        out.put("stop_texts", new JSONArray(m.stopTexts()));
        out.put("executorch_version", m.executorchVersion);
        JSONArray renders = new JSONArray();
        for (int i = 0; i < convs.length(); i++) {
            JSONArray conv = convs.getJSONArray(i);
            List<ChatMessage> msgs = new ArrayList<ChatMessage>();
            for (int j = 0; j < conv.length(); j++) {
                msgs.add(new ChatMessage(conv.getJSONObject(j).getString("role"),
                        conv.getJSONObject(j).getString("content")));
            }
            JSONArray pair = new JSONArray();
            pair.put(m.promptFormat == null ? JSONObject.NULL : m.promptFormat.render(msgs, true));
            pair.put(m.promptFormat == null ? JSONObject.NULL : m.promptFormat.render(msgs, false));
            pair.put(m.phoneProfiles.isEmpty() || m.promptFormat == null ? JSONObject.NULL
                    : (Object) Settings.forChat(m, DeviceInfo.fromProfile(m.phoneProfiles.values().iterator().next()))
                    .replyTokens(m.promptFormat.render(msgs, true)));
            renders.put(pair);
        }
        out.put("renders", renders);
        JSONObject settings = new JSONObject();
        for (BundleManifest.PhoneProfile p : m.phoneProfiles.values()) {
            settings.put(p.name, describe(m, DeviceInfo.fromProfile(p)));
        }
        out.put("settings", settings);
        JSONArray bench = new JSONArray();
        for (BundleManifest.BenchmarkPrompt p : m.benchmarkPrompts) {
            JSONObject b = new JSONObject();
            b.put("context", p.context);
            b.put("text", p.text);
            bench.put(b);
        }
        out.put("benchmark_prompts", bench);
        out.put("benchmark_decode_tokens", m.benchmarkDecodeTokens);
        System.out.println(out.toString(1));
    }

    private static JSONObject describe(BundleManifest m, DeviceInfo d) throws Exception {
        JSONObject o = new JSONObject();
        try {
            Settings chat = Settings.forChat(m, d);
            Settings bench = Settings.forBenchmark(m, d);
            o.put("context_tokens", chat.contextTokens);
            o.put("chat_temperature", (double) chat.temperature);
            o.put("benchmark_temperature", (double) bench.temperature);
            o.put("num_bos", chat.numBos);
            o.put("threads", chat.threads);
        } catch (BundleException e) {
            o.put("error", e.getMessage());
        }
        return o;
    }
}
