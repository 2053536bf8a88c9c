package com.facebook.jni;

/** Offline-build stand-in for fbjni's ThreadScopeSupport (libfbjni.so calls runStdFunction). */
public class ThreadScopeSupport {
    private static void runStdFunction(long ptr) {
        runStdFunctionImpl(ptr);
    }

    private static native void runStdFunctionImpl(long ptr);
}
