package com.facebook.soloader.nativeloader;

/** Offline-build stand-in for soloader's NativeLoader: the calls ExecuTorch's Java API makes. */
public class NativeLoader {
    private static NativeLoaderDelegate sDelegate;

    private NativeLoader() {
    }

    public static synchronized void init(NativeLoaderDelegate delegate) {
        if (sDelegate != null) {
            throw new IllegalStateException("Cannot re-initialize NativeLoader.");
        }
        sDelegate = delegate;
    }

    public static synchronized boolean isInitialized() {
        return sDelegate != null;
    }

    public static boolean loadLibrary(String shortName) {
        return loadLibrary(shortName, 0);
    }

    public static boolean loadLibrary(String shortName, int flags) {
        NativeLoaderDelegate d;
        synchronized (NativeLoader.class) {
            if (sDelegate == null) {
                throw new IllegalStateException("NativeLoader has not been initialized.");
            }
            d = sDelegate;
        }
        return d.loadLibrary(shortName, flags);
    }
}
