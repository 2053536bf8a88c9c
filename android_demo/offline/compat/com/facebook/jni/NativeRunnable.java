package com.facebook.jni;

/** Offline-build stand-in for fbjni's NativeRunnable (libfbjni.so registers its native run()). */
public class NativeRunnable implements Runnable {
    private final HybridData mHybridData;

    private NativeRunnable(HybridData hybridData) {
        mHybridData = hybridData;
    }

    @Override
    public native void run();
}
