package com.facebook.jni;

/** Offline-build stand-in for fbjni's HybridClassBase (looked up by name in libfbjni.so). */
public abstract class HybridClassBase extends HybridData {
}
