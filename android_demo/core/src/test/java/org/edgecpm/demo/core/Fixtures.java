package org.edgecpm.demo.core;

import java.util.ArrayList;
import java.util.List;
import org.json.JSONArray;
import org.json.JSONObject;

/** A manifest in the layout `edgecpm package android` writes, built in code for the unit tests. */
final class Fixtures {
    private Fixtures() {
    }

    static JSONObject manifest() throws Exception {
        JSONObject fmt = new JSONObject();
        fmt.put("schema", PromptFormat.SCHEMA);
        JSONObject start = new JSONObject();
        JSONObject prefix = new JSONObject();
        JSONObject suffix = new JSONObject();
        for (String r : PromptFormat.ROLES) {
            start.put(r, r.equals("system") ? "" : "<|im_start|>system\nDefault<|im_end|>\n");
            prefix.put(r, "<|im_start|>" + r + "\n");
            suffix.put(r, "<|im_end|>\n");
        }
        fmt.put("start", start).put("prefix", prefix).put("suffix", suffix);
        fmt.put("generation_prompt", "<|im_start|>assistant\n");
        JSONObject bench = new JSONObject();
        bench.put("source", "WikiText-2");
        bench.put("decode_tokens", 4);
        bench.put("temperature", 0.0);
        JSONArray prompts = new JSONArray();
        prompts.put(new JSONObject().put("context", 8).put("text", "The quick brown fox"));
        prompts.put(new JSONObject().put("context", 16).put("text", "The quick brown fox jumps over it"));
        bench.put("prompts", prompts);
        JSONObject phones = new JSONObject();
        phones.put("big-phone", new JSONObject().put("display_name", "Big").put("memory_budget_bytes", 8L << 30)
                .put("threads", 6));
        phones.put("small-phone", new JSONObject().put("display_name", "Small")
                .put("memory_budget_bytes", (64L << 20) + 1000 + 600 * 100).put("threads", 4));
        phones.put("tiny-phone", new JSONObject().put("display_name", "Tiny").put("memory_budget_bytes", 1000)
                .put("threads", 2));
        JSONObject files = new JSONObject();
        files.put("model", new JSONObject().put("name", "model.pte").put("bytes", 1000).put("sha256", "x"));
        files.put("tokenizer", new JSONObject().put("name", "tokenizer.model").put("bytes", 10).put("sha256", "y"));
        JSONObject special = new JSONObject().put("<s>", 1).put("</s>", 2).put("<|im_end|>", 600);
        JSONObject a = new JSONObject();
        a.put("schema", BundleManifest.SCHEMA).put("device_dir", "/data/local/tmp/edgecpm").put("files", files);
        a.put("executorch_version", "1.5.1").put("max_seq_len", 16).put("max_context_len", 4096);
        a.put("bos_id", 1).put("eos_ids", new JSONArray().put(2).put(600)).put("add_bos", true);
        a.put("special_tokens", special).put("prompt_format", fmt).put("prompt_format_error", JSONObject.NULL);
        a.put("kv_bytes_per_token", 100).put("benchmark", bench).put("device_profiles", phones);
        JSONObject root = new JSONObject();
        root.put("format", "executorch").put("quant", "fp32");
        root.put("config", new JSONObject().put("name", "tiny"));
        root.put("extra", new JSONObject().put("android", a));
        return root;
    }

    static BundleManifest parsed() throws Exception {
        return BundleManifest.parse(manifest().toString(), null);
    }

    /** Streams scripted pieces and runner stats; records what it was asked. */
    static final class FakeEngine implements Engine {
        final List<String> prompts = new ArrayList<String>();
        final List<Integer> seqLens = new ArrayList<Integer>();
        List<String> pieces = new ArrayList<String>();
        int resets;
        boolean stopped;

        @Override
        public void load() {
        }

        @Override
        public void generate(String prompt, int seqLen, float temperature, int numBos, Listener listener) {
            prompts.add(prompt);
            seqLens.add(seqLen);
            stopped = false;
            int n = 0;
            for (String p : pieces) {
                if (stopped) {
                    break;
                }
                listener.onPiece(p);
                n++;
            }
            listener.onStats("{\"prompt_tokens\":" + (prompt.length() / 4) + ",\"generated_tokens\":" + n
                    + ",\"model_load_start_ms\":0,\"model_load_end_ms\":5,\"inference_start_ms\":100,"
                    + "\"inference_end_ms\":400,\"prompt_eval_end_ms\":150,\"first_token_ms\":160,"
                    + "\"aggregate_sampling_time_ms\":1,\"SCALING_FACTOR_UNITS_PER_SECOND\":1000}");
        }

        @Override
        public void stop() {
            stopped = true;
        }

        @Override
        public void resetContext() {
            resets++;
        }
    }
}
