package org.edgecpm.demo.core;

import org.json.JSONException;
import org.json.JSONObject;

/**
 * Speed of one generate call from the ExecuTorch runner's stats JSON (LlmCallback.onStats).
 *
 * <p>TTFT is first_token - inference_start; prefill tokens/s is prompt tokens over inference_start ..
 * prompt_eval_end; decode tokens/s counts the tokens after the first over first_token .. inference_end
 * (the first token comes out of the prefill).
 */
public final class GenerationStats {
    public final int promptTokens;
    public final int generatedTokens;
    public final double modelLoadMs;
    public final double ttftMs;
    public final double prefillMs;
    public final double decodeMs;

    GenerationStats(int promptTokens, int generatedTokens, double modelLoadMs, double ttftMs, double prefillMs,
                    double decodeMs) {
        this.promptTokens = promptTokens;
        this.generatedTokens = generatedTokens;
        this.modelLoadMs = modelLoadMs;
        this.ttftMs = ttftMs;
        this.prefillMs = prefillMs;
        this.decodeMs = decodeMs;
    }

    public static GenerationStats fromRunnerJson(String json) {
        try {
            JSONObject o = new JSONObject(json);
            double scale = 1000.0 / o.optDouble("SCALING_FACTOR_UNITS_PER_SECOND", 1000.0);
            double start = o.getDouble("inference_start_ms") * scale;
            double promptEnd = o.getDouble("prompt_eval_end_ms") * scale;
            double first = o.getDouble("first_token_ms") * scale;
            double end = o.getDouble("inference_end_ms") * scale;
            double load = (o.getDouble("model_load_end_ms") - o.getDouble("model_load_start_ms")) * scale;
            return new GenerationStats(o.getInt("prompt_tokens"), o.getInt("generated_tokens"), load,
                    first - start, promptEnd - start, end - first);
        } catch (JSONException e) {
            throw new IllegalArgumentException("runner stats are not the expected JSON: " + e.getMessage());
        }
    }

    public double prefillTokensPerSecond() {
        return prefillMs > 0 ? promptTokens * 1000.0 / prefillMs : Double.NaN;
    }

    public double decodeTokensPerSecond() {
        return generatedTokens > 1 && decodeMs > 0 ? (generatedTokens - 1) * 1000.0 / decodeMs : Double.NaN;
    }

    /** "12.3 tok/s · TTFT 85 ms" for the chat screen. */
    public String summary() {
        return String.format(java.util.Locale.ROOT, "%.1f tok/s · prefill %.0f tok/s · TTFT %.0f ms",
                decodeTokensPerSecond(), prefillTokensPerSecond(), ttftMs);
    }
}
