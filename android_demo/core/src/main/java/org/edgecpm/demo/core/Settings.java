package org.edgecpm.demo.core;

import java.util.List;

/**
 * Generation settings for one bundle on one device.
 *
 * <p>Context: the longest KV cache that fits the device's memory budget beside the program, capped by the
 * bundle's exported context: {@code (budget - program bytes - RUNTIME_BYTES) / kv_bytes_per_token}. Reply
 * length: ExecuTorch 1.5's runner reads {@code seqLen} as the number of tokens to generate and fails when prompt
 * plus reply pass the exported context, so a chat reply gets {@link #CHAT_REPLY_TOKENS} capped by the context
 * left after the prompt, counting each prompt byte as a token (a byte-fallback tokenizer never makes more).
 * BOS: the runner adds none by
 * itself, so {@code numBos} is 1 when the tokenizer adds one. Temperature: {@link #CHAT_TEMPERATURE} for chat,
 * the bundle's benchmark temperature (0, greedy) for the benchmark.
 */
public final class Settings {
    /** Memory the ExecuTorch runtime, the app and its buffers take beside the program and KV cache. */
    public static final long RUNTIME_BYTES = 64L << 20;
    /** Longest chat reply. */
    public static final int CHAT_REPLY_TOKENS = 256;
    /** Sampling temperature of chat (the runner accepts 0..1). */
    public static final float CHAT_TEMPERATURE = 0.8f;

    public final int contextTokens;
    public final float temperature;
    public final int numBos;
    public final int threads;
    public final List<String> stopTexts;
    public final String device;

    private Settings(int contextTokens, float temperature, int numBos, int threads, List<String> stopTexts,
                     String device) {
        this.contextTokens = contextTokens;
        this.temperature = temperature;
        this.numBos = numBos;
        this.threads = threads;
        this.stopTexts = stopTexts;
        this.device = device;
    }

    /** Tokens the reply to `prompt` may have; 0 when the prompt may already fill the context. */
    public int replyTokens(String prompt) {
        int promptBound = prompt.getBytes(java.nio.charset.StandardCharsets.UTF_8).length + numBos;
        return (int) Math.max(0, Math.min(CHAT_REPLY_TOKENS, (long) contextTokens - 1 - promptBound));
    }

    public static Settings forChat(BundleManifest m, DeviceInfo d) throws BundleException {
        return choose(m, d, CHAT_TEMPERATURE);
    }

    public static Settings forBenchmark(BundleManifest m, DeviceInfo d) throws BundleException {
        return choose(m, d, m.benchmarkTemperature);
    }

    static Settings choose(BundleManifest m, DeviceInfo d, float temperature) throws BundleException {
        long free = d.memoryBudgetBytes - m.modelBytes - RUNTIME_BYTES;
        long fit = m.kvBytesPerToken > 0 ? free / m.kvBytesPerToken : Long.MAX_VALUE;
        if (free <= 0 || fit < m.maxSeqLen) {
            throw new BundleException("the model (" + (m.modelBytes >> 20) + " MiB) does not fit " + d.name
                    + "'s memory budget of " + (d.memoryBudgetBytes >> 20) + " MiB");
        }
        int ctx = (int) Math.min(m.maxContextLen, fit);
        return new Settings(ctx, temperature, m.addBos ? 1 : 0, d.threads, m.stopTexts(), d.name);
    }
}
