package org.edgecpm.demo;

import java.lang.reflect.Method;
import org.edgecpm.demo.core.BundleException;
import org.edgecpm.demo.core.BundleManifest;
import org.edgecpm.demo.core.Engine;
import org.pytorch.executorch.extension.llm.LlmCallback;
import org.pytorch.executorch.extension.llm.LlmModule;

/**
 * {@link Engine} over ExecuTorch's {@code LlmModule}. Only calls that exist in both the Java (≤1.3) and Kotlin
 * (≥1.4) API are made directly, return values ignored; the overload that takes temperature and BOS count
 * (newer runtimes) is looked up by reflection. Without it, temperature is the constructor's (the module is
 * rebuilt when it changes) and BOS cannot be requested. {@code seqLen} carries the number of new tokens: that
 * is how ExecuTorch 1.5's runner reads it (tests/test_android_contract.py checks it on the host runner).
 */
final class ExecuTorchEngine implements Engine {
    private final BundleManifest manifest;
    private LlmModule module;
    private float moduleTemperature = Float.NaN;
    private final Method fullGenerate;

    ExecuTorchEngine(BundleManifest manifest) {
        this.manifest = manifest;
        Method m = null;
        try {
            m = LlmModule.class.getMethod("generate", String.class, int.class, LlmCallback.class, boolean.class,
                    float.class, int.class, int.class);
        } catch (NoSuchMethodException e) {
            m = null;
        }
        fullGenerate = m;
    }

    /** Whether this runtime takes a BOS count (else a bundle that needs BOS generates without it). */
    boolean supportsBos() {
        return fullGenerate != null;
    }

    @Override
    public void load() throws BundleException {
        open(Float.isNaN(moduleTemperature) ? 0f : moduleTemperature);
    }

    private void open(float temperature) throws BundleException {
        if (module != null && temperature == moduleTemperature) {
            return;
        }
        close();
        try {
            module = new LlmModule(manifest.modelPath().getAbsolutePath(), manifest.tokenizerPath().getAbsolutePath(),
                    temperature);
            module.load();
            moduleTemperature = temperature;
        } catch (RuntimeException e) {
            module = null;
            throw new BundleException("ExecuTorch could not load " + manifest.modelPath() + ": " + e.getMessage());
        }
    }

    @Override
    public void generate(String prompt, int newTokens, float temperature, int numBos, final Listener listener)
            throws BundleException {
        LlmCallback cb = new LlmCallback() {
            @Override
            public void onResult(String piece) {
                listener.onPiece(piece);
            }

            @Override
            public void onStats(String json) {
                listener.onStats(json);
            }
        };
        try {
            if (fullGenerate != null) {
                open(Float.isNaN(moduleTemperature) ? temperature : moduleTemperature);
                fullGenerate.invoke(module, prompt, newTokens, cb, false, temperature, numBos, 0);
            } else {
                open(temperature);
                module.generate(prompt, newTokens, cb, false);
            }
        } catch (ReflectiveOperationException | RuntimeException e) {
            Throwable cause = e.getCause() != null ? e.getCause() : e;
            throw new BundleException("generation failed: " + cause.getMessage());
        }
    }

    @Override
    public void stop() {
        if (module != null) {
            module.stop();
        }
    }

    @Override
    public void resetContext() {
        if (module != null) {
            module.resetContext();
        }
    }

    /** Frees the native runner: {@code close()} in newer APIs, {@code resetNative()} in older ones. */
    void close() {
        if (module == null) {
            return;
        }
        for (String name : new String[] {"close", "resetNative"}) {
            try {
                module.getClass().getMethod(name).invoke(module);
                break;
            } catch (ReflectiveOperationException e) {
                // try the other name
            }
        }
        module = null;
    }
}
