package com.facebook.jni.annotations;

/** Offline-build stand-in for fbjni's annotation (Gradle builds use com.facebook.fbjni from Maven). */
public @interface DoNotStrip {
}
