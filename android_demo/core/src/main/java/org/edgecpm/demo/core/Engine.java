package org.edgecpm.demo.core;

/** The inference engine behind the app (ExecuTorch's LlmModule on the phone, a scripted fake in tests). */
public interface Engine {
    /** Receives what the runner streams. */
    interface Listener {
        void onPiece(String piece);

        void onStats(String runnerStatsJson);
    }

    void load() throws BundleException;

    /** Blocking: streams at most `newTokens` tokens continuing `prompt` (the runner stops at EOS too). */
    void generate(String prompt, int newTokens, float temperature, int numBos, Listener listener)
            throws BundleException;

    void stop();

    /** Forget the KV cache (the next prompt starts at position 0). */
    void resetContext();
}
